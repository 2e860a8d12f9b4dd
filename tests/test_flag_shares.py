"""Issue 25, finding 5: one client could take the whole anonymous hourly budget (every other
anonymous visitor then heard "log in to keep flagging"), and anonymous flags alone could fill the
store's cap, which then refused logged-in visitors too."""
import pytest
from gradio_client.exceptions import AppError

from test_app import App, mnist, round0  # noqa: F401 (fixtures)
from test_public import canvas_of, good, studio_for  # noqa: F401 (fixtures)


def test_one_address_takes_only_its_share_of_the_anonymous_budget(round0, mnist, good, tmp_path):  # noqa: F811
    app = App(tmp_path / "home", round0, DADC_FLAG_BUDGET="20", DADC_FLAG_LIMIT="1000", DADC_THRESHOLD="100000")
    try:
        greedy, taken = app.client("198.51.100.77"), 0
        for _ in range(20):
            try:
                greedy.predict(good, 3, api_name="/flag")
                taken += 1
            except AppError as e:
                assert "your share" in str(e)
                break
        assert taken == 2  # a tenth of 20
        for k in range(3):  # the others still may
            assert app.client(f"198.51.100.{80 + k}").predict(good, 3, api_name="/flag")["saved"]
    finally:
        app.stop()


def test_anonymous_flags_cannot_fill_the_room_kept_for_logged_in_visitors(studio_for, mnist):  # noqa: F811
    from dadc.studio import StudioError, Visitor

    s = studio_for(DADC_MAX_FLAGS="10", DADC_FLAG_BUDGET="1000", DADC_THRESHOLD="1000")
    for i in range(8):  # 80 % of the cap
        s.flag(canvas_of(mnist, i), 1, f"anon-{i:012x}")
    with pytest.raises(StudioError, match="room for anonymous flags is full"):
        s.flag(canvas_of(mnist, 8), 1, "anon-00000000ffff")
    ada = Visitor("ada", username="ada")
    assert s.flag(canvas_of(mnist, 8), 1, ada)["saved"] and s.flag(canvas_of(mnist, 9), 1, ada)["saved"]
    with pytest.raises(StudioError, match="collection is full"):
        s.flag(canvas_of(mnist, 10), 1, ada)
    assert s.store.count() == 10
    from dadc.studio.service import stored_counts

    assert stored_counts(s.store) == (10, 8)  # what a restart (or a restore) counts the limits from
    s.stop()
