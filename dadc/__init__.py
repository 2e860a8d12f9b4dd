"""DADC studio: dynamic adversarial data collection for handwritten digits."""
