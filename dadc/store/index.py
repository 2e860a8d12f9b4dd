"""The store's rows and votes in memory, following the files' tails (store/flags.py uses it)."""
from .. import files
from ..examples import Example, believed
from .layout import FIELDS, ROWS, VOTES


class Index:
    """The store's rows and votes in memory, kept up with the files by reading what was appended
    since the last look (their tails): a request costs a stat per file, not a read of the store.
    rows: id -> (row, folder), the first row of an id wins; votes: id -> {voter: agree}, the
    latest believed vote of each voter (examples.believed: `admins` are the account ids of the
    admins now; a vote is read with its replica's folder); voted: voter -> ids; by_votes[k]: the
    ids with k voters."""

    PROBES = 64  # random looks into a large group of examples with equal votes before scanning it

    def __init__(self, admins=frozenset()):
        self.admins = frozenset(admins)
        self.rows, self.order, self.votes, self.voted = {}, [], {}, {}
        self.by_votes = {0: Bag()}
        self.offset = {}  # file -> bytes read (up to the last whole line)
        self.pending_votes = []  # (vote, its folder) read before the row it names (another replica's order)

    def follow(self, folders):
        """Read what was appended to each folder's files; False if a file shrank."""
        for d in folders:
            for name, apply in ((ROWS, self._add_row), (VOTES, self._add_vote)):
                path = d / name
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                seen = self.offset.get(path, 0)
                if size < seen:
                    return False
                if size == seen:
                    continue
                rows, self.offset[path] = files.read_tail(path, seen, size)
                for row in rows:
                    apply(row, d)
        pending, self.pending_votes = self.pending_votes, []
        for row, d in pending:
            self._add_vote(row, d, wait=False)
        return True

    def _add_row(self, row, folder):
        if all(k in row for k in FIELDS) and row["id"] not in self.rows:
            self.rows[row["id"]] = (row, folder)
            self.order.append(row["id"])
            self.votes[row["id"]] = {}
            self.by_votes[0].add(row["id"])

    def _add_vote(self, row, folder, wait=True):
        id_, who = row.get("id"), str(row.get("session", ""))
        if id_ not in self.rows:
            if isinstance(id_, str) and wait:
                self.pending_votes.append((row, folder))
            return
        flag, flag_folder = self.rows[id_]
        if not believed(who, row.get("admin") is True, flag["session"], folder == flag_folder, self.admins):
            return  # as if never cast: a forged admin mark, another replica's "retraction" of an anonymous flag
        votes = self.votes[id_]
        if who not in votes:  # a new voter: the example moves up a group
            self.by_votes[len(votes)].discard(id_)
            self.by_votes.setdefault(len(votes) + 1, Bag()).add(id_)
            self.voted.setdefault(who, set()).add(id_)
        digit = row.get("digit")
        votes[who] = (bool(row.get("agree")), digit if isinstance(digit, int) and 0 <= digit <= 9 else None,
                      row.get("admin") is True)

    def example(self, id_):
        row, d = self.rows[id_]
        others = {who: v for who, v in self.votes[id_].items() if who != row["session"]}
        own = self.votes[id_].get(row["session"])
        agree = sum(a for a, _, _ in others.values())
        admin = [a for a, _, is_admin in others.values() if is_admin]
        return Example(id=id_, label=row["label"], prediction=row["prediction"], confidences=tuple(row["confidences"]),
                       round=row["round"], time=row["time"], visitor=row["session"], path=d / row["file_name"],
                       canvas_path=d / row["canvas_file_name"], agree=agree, disagree=len(others) - agree,
                       corrections=tuple(g for a, g, _ in others.values() if not a and g is not None),
                       admin=admin[-1] if admin else None, retracted=own is not None and not own[0])

    def next_to_vote(self, who, rng, votes, also=()):
        voted, own = self.voted.get(who, ()), {who, *also}

        def fits(i):
            return i not in voted and self.rows[i][0]["session"] not in own and not self.example(i).decided(votes)
        for k in sorted(self.by_votes):
            bag = self.by_votes[k]
            for _ in range(self.PROBES if len(bag) > self.PROBES else 0):
                i = bag.choice(rng)
                if fits(i):
                    return i
            fit = [i for i in bag.items if fits(i)]  # small, or the probes found nothing: look at all
            if fit:
                return rng.choice(fit)
        return None


class Bag:
    """A set with O(1) add, discard and random choice."""

    def __init__(self):
        self.items, self.where = [], {}

    def __len__(self):
        return len(self.items)

    def add(self, x):
        if x not in self.where:
            self.where[x] = len(self.items)
            self.items.append(x)

    def discard(self, x):
        i = self.where.pop(x, None)
        if i is not None:
            last = self.items.pop()
            if i < len(self.items):
                self.items[i], self.where[last] = last, i

    def choice(self, rng):
        return self.items[rng.randrange(len(self.items))]
