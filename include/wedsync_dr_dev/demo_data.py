"""Deterministic WedSync demo data: the same seed and day always give the same rows and files.

Scale is one knob, the number of weddings: `--weddings 200` for tests, `--weddings 20000` for about
1 GB of table data (benchmarks). Dates are relative to `today`, so a realistic share of weddings is
always within the next 30 days (the `critical_weddings` window), some far ahead and many in the past.

Rows are generated as COPY text and streamed to the server in ~1 MiB chunks: nothing is held in memory
beyond a chunk. Asset files (JPEG-like photos that do not compress, PDF-like documents that do) go to a
local asset-source directory and their metadata rows into `documents` and `photos`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from wedsync_dr.paths import SQL_DIR

FIRST_NAMES = ("Amelia Olivia Isla Ava Mia Sophia Grace Lily Freya Emily Ivy Ella Rosie Evie Florence Poppy "
               "Oliver George Noah Arthur Leo Muhammad Harry Oscar Archie Henry Theodore Freddie Jack Charlie "
               "Finn Alfie Thomas James William Priya Aisha Chen Mateo Lucia Sofia Ana Kofi Amara Yusuf").split()
LAST_NAMES = ("Smith Jones Taylor Brown Williams Wilson Johnson Davies Patel Robinson Wright Thompson Evans "
              "Walker White Roberts Green Hall Thomas Clarke Jackson Wood Harris Edwards Turner Martin Cooper "
              "Hill Ward Hughes Moore Clark King Harrison Lewis Baker Lee Allen Morris Khan Scott Watson").split()
CITIES = ("London Manchester Bristol Edinburgh York Bath Brighton Oxford Cambridge Cardiff Leeds Glasgow "
          "Liverpool Norwich Exeter Durham Belfast Inverness Canterbury Chester").split()
VENUES = ("Manor House|Old Barn|Castle|Country Club|Abbey|Orangery|Boathouse|Vineyard|Town Hall|Walled Garden|"
          "Lakeside Lodge|Priory|Mill|Assembly Rooms|Farm").split("|")
CATEGORIES = ("photographer videographer venue caterer florist band dj planner cake hair_makeup stationery "
              "transport").split()
DIETARY = ("", "", "", "", "vegetarian", "vegan", "gluten_free", "nut_allergy", "halal", "kosher")
TIMELINE = ("Bridal prep", "Groom prep", "Guests arrive", "Ceremony", "Confetti", "Drinks reception",
            "Group photos", "Wedding breakfast", "Speeches", "Cake cutting", "First dance", "Evening guests",
            "Evening food", "Last orders", "Carriages")
TASKS = ("Book venue", "Send save the dates", "Choose menu", "Order flowers", "Final guest numbers",
         "Seating plan", "Dress fitting", "Confirm timings with band", "Pay venue balance", "Order cake",
         "Book hair trial", "Write vows", "Collect rings", "Confirm transport", "Print order of service")
WORDS = ("lovely wonderful timing flowers perfect ceremony evening guests reception couple photos dance "
         "menu budget table garden music light candles speech detail plan day team contract deposit balance "
         "schedule venue arrive setup pack return late early confirm").split()

CRITICAL_WINDOW_DAYS = 30


@dataclass(frozen=True)
class Scale:
    weddings: int = 200
    seed: int = 42
    photos: int | None = None  # default: one per 10 weddings, at most 200
    documents: int | None = None  # default: one per 10 weddings, at most 200
    asset_size_scale: float = 1.0  # < 1 shrinks files for fast tests; 1.0 is realistic (photos 1.5-4 MB)

    @property
    def suppliers(self) -> int:
        return max(12, self.weddings // 10)

    @property
    def photo_count(self) -> int:
        return self.photos if self.photos is not None else min(200, max(1, self.weddings // 10))

    @property
    def document_count(self) -> int:
        return self.documents if self.documents is not None else min(200, max(1, self.weddings // 10))


def _esc(value: object) -> str:
    """One COPY text field."""
    if value.__class__ is str:
        text = value
    elif value is None:
        return "\\N"
    elif value.__class__ is bool:
        return "t" if value else "f"
    else:
        return str(value)  # numbers and dates need no escaping
    if "\\" in text or "\t" in text or "\n" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return text


def _line(*fields: object) -> str:
    return "\t".join([_esc(field) for field in fields]) + "\n"


class _Generator:
    def __init__(self, scale: Scale, today: dt.date):
        self.scale = scale
        self.today = today
        self.rng = random.Random(scale.seed)
        self.epoch = dt.datetime.combine(today, dt.time(9, 0), tzinfo=dt.UTC)
        # Formatting a timestamp costs more than the rest of a row: draw them from fixed pools.
        self._ts_pools = {days: [self._format_ts(days) for _ in range(4096)] for days in (30, 720)}
        self.counts: dict[str, int] = {}
        # shared state between tables, small per wedding/supplier
        self.wedding_dates: list[dt.date] = []
        self.wedding_suppliers: list[list[int]] = []
        self.packages_by_supplier: dict[int, list[int]] = {}
        self.forms_by_supplier: dict[int, list[int]] = {}

    # helpers -------------------------------------------------------------
    def _format_ts(self, days_ago_max: int) -> str:
        return (self.epoch - dt.timedelta(seconds=self.rng.randrange(days_ago_max * 86400))).isoformat()

    def ts(self, days_ago_max: int = 720) -> str:
        """A time within the last `days_ago_max` (30 or 720) days."""
        return self._ts_pools[days_ago_max][self.rng.getrandbits(12)]

    def sentence(self, words: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=words)).capitalize() + "."

    def person(self) -> tuple[str, str]:
        return self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)

    def wedding_date(self) -> dt.date:
        roll = self.rng.random()
        if roll < 0.10:  # the critical window: about one wedding in ten is within 30 days
            offset = self.rng.randrange(0, CRITICAL_WINDOW_DAYS + 1)
        elif roll < 0.55:
            offset = -self.rng.randrange(1, 730)
        else:
            offset = self.rng.randrange(CRITICAL_WINDOW_DAYS + 1, 540)
        return self.today + dt.timedelta(days=offset)

    # tables --------------------------------------------------------------
    def suppliers(self) -> Iterator[str]:
        rng = self.rng
        for sid in range(1, self.scale.suppliers + 1):
            first, last = self.person()
            category = CATEGORIES[sid % len(CATEGORIES)]
            name = f"{last} {category.replace('_', ' ').title()} Co {sid}"
            yield _line(sid, name, category, f"{first} {last}", f"hello{sid}@{last.lower()}-{category}.example",
                        f"+44 7{rng.randrange(10**8, 10**9)}", rng.choice(CITIES), "GB",
                        f"https://{last.lower()}{sid}.example", self.ts(), self.ts(30))

    def supplier_services(self) -> Iterator[str]:
        service_id = 0
        for sid in range(1, self.scale.suppliers + 1):
            for n in range(self.rng.randrange(2, 6)):
                service_id += 1
                yield _line(service_id, sid, f"Service {n + 1}", self.sentence(12),
                            self.rng.randrange(5_000, 500_000), self.ts(), self.ts(30))

    def supplier_packages(self) -> Iterator[str]:
        package_id = 0
        for sid in range(1, self.scale.suppliers + 1):
            ids = []
            for tier in ("Essential", "Signature", "Luxury"):
                package_id += 1
                ids.append(package_id)
                inclusions = json.dumps([self.sentence(4) for _ in range(self.rng.randrange(2, 6))])
                yield _line(package_id, sid, f"{tier} package", self.rng.randrange(50_000, 2_000_000),
                            inclusions, True, self.ts(), self.ts(30))
            self.packages_by_supplier[sid] = ids

    def clients(self) -> Iterator[str]:
        for cid in range(1, self.scale.weddings + 1):
            (f1, l1), (f2, l2) = self.person(), self.person()
            yield _line(cid, f"{f1} {l1}", f"{f2} {l2}", f"{f1.lower()}.{l1.lower()}{cid}@mail.example",
                        f"+44 7{self.rng.randrange(10**8, 10**9)}", self.rng.choice(CITIES),
                        self.rng.random() < 0.4, self.ts(), self.ts(30))

    def client_contacts(self) -> Iterator[str]:
        contact_id = 0
        for cid in range(1, self.scale.weddings + 1):
            for relationship in self.rng.sample(("mother", "father", "best_man", "maid_of_honour", "planner"), 2):
                contact_id += 1
                first, last = self.person()
                yield _line(contact_id, cid, f"{first} {last}", relationship,
                            f"{first.lower()}{contact_id}@mail.example", f"+44 7{self.rng.randrange(10**8, 10**9)}",
                            self.ts(), self.ts(30))

    def weddings(self) -> Iterator[str]:
        rng = self.rng
        for wid in range(1, self.scale.weddings + 1):
            date = self.wedding_date()
            self.wedding_dates.append(date)
            self.wedding_suppliers.append(rng.sample(range(1, self.scale.suppliers + 1), min(6, self.scale.suppliers)))
            if date < self.today:
                status = "cancelled" if rng.random() < 0.05 else "completed"
            else:
                status = rng.choice(("planning", "confirmed", "confirmed")) if (date - self.today).days < 120 \
                    else rng.choice(("enquiry", "planning"))
            yield _line(wid, wid, date.isoformat(), f"{rng.choice(CITIES)} {rng.choice(VENUES)}", rng.choice(CITIES),
                        status, rng.randrange(40, 220), rng.randrange(8_000, 60_000) * 100, "GBP",
                        self.sentence(rng.randrange(5, 25)), self.ts(), self.ts(30))

    def _wedding_ids(self) -> Iterator[tuple[int, dt.date, list[int]]]:
        for index, (date, suppliers) in enumerate(zip(self.wedding_dates, self.wedding_suppliers, strict=True)):
            yield index + 1, date, suppliers

    def wedding_vendors(self) -> Iterator[str]:
        for wid, _date, suppliers in self._wedding_ids():
            for sid in suppliers:
                yield _line(wid, sid, self.rng.choice(self.packages_by_supplier[sid]),
                            CATEGORIES[sid % len(CATEGORIES)], "booked", self.ts(), self.ts(), self.ts(30))

    def contracts(self) -> Iterator[str]:
        contract_id = 0
        for wid, _date, suppliers in self._wedding_ids():
            for sid in suppliers:
                contract_id += 1
                signed = self.rng.random() < 0.8
                terms = " ".join(self.sentence(14) for _ in range(self.rng.randrange(8, 20)))
                yield _line(contract_id, wid, sid, "signed" if signed else "sent",
                            self.rng.randrange(50_000, 1_500_000), terms, self.ts() if signed else None,
                            self.ts(), self.ts(30))

    def reviews(self) -> Iterator[str]:
        review_id = 0
        for wid, date, suppliers in self._wedding_ids():
            if date >= self.today:
                continue
            for sid in suppliers[:2]:
                review_id += 1
                yield _line(review_id, sid, wid, self.rng.choice((3, 4, 4, 5, 5, 5)), self.sentence(4),
                            self.sentence(self.rng.randrange(20, 80)), True, self.ts(), self.ts(30))

    def guests(self) -> Iterator[str]:
        # The largest table (two rows in three): written without the generic helpers, for speed.
        guest_id = 0
        rng = self.rng
        choice, bits = rng.choice, rng.getrandbits
        sides = ("partner_one", "partner_two", "both", "both")
        rsvps = ("pending", "attending", "attending", "declined")
        dietary = [d or "\\N" for d in DIETARY]
        old, recent = self._ts_pools[720], self._ts_pools[30]
        for wid, _date, _suppliers in self._wedding_ids():
            for _ in range(rng.randrange(40, 200)):
                guest_id += 1
                first, last = choice(FIRST_NAMES), choice(LAST_NAMES)
                yield (f"{guest_id}\t{wid}\t{first}\t{last}\t{first.lower()}.{last.lower()}{guest_id}@mail.example\t"
                       f"{sides[bits(2)]}\t{rsvps[bits(2)]}\t{choice(dietary)}\t{1 + bits(4)}\t"
                       f"{'t' if bits(3) == 0 else 'f'}\t{old[bits(12)]}\t{recent[bits(12)]}\n")

    def timeline_events(self) -> Iterator[str]:
        event_id = 0
        for wid, date, suppliers in self._wedding_ids():
            start = dt.datetime.combine(date, dt.time(9, 0), tzinfo=dt.UTC)
            for step, title in enumerate(TIMELINE):
                event_id += 1
                begins = start + dt.timedelta(minutes=45 * step)
                yield _line(event_id, wid, self.rng.choice(suppliers), begins.isoformat(),
                            (begins + dt.timedelta(minutes=40)).isoformat(), title,
                            self.rng.choice(("Main hall", "Garden", "Chapel", "Terrace")), self.sentence(8),
                            self.ts(), self.ts(30))

    def tasks(self) -> Iterator[str]:
        task_id = 0
        for wid, date, suppliers in self._wedding_ids():
            for title in self.rng.sample(TASKS, 10):
                task_id += 1
                due = date - dt.timedelta(days=self.rng.randrange(1, 300))
                done = due < self.today and self.rng.random() < 0.9
                yield _line(task_id, wid, self.rng.choice(suppliers), title, due.isoformat(),
                            "done" if done else self.rng.choice(("todo", "in_progress")),
                            self.ts() if done else None, self.ts(), self.ts(30))

    def invoices(self) -> Iterator[str]:
        invoice_id = 0
        for wid, date, suppliers in self._wedding_ids():
            for sid in suppliers:
                invoice_id += 1
                due = date - dt.timedelta(days=30)
                status = "paid" if due < self.today else self.rng.choice(("issued", "paid"))
                yield _line(invoice_id, wid, sid, f"INV-{sid:05d}-{invoice_id:08d}",
                            self.rng.randrange(20_000, 900_000), "GBP", due.isoformat(), status,
                            self.ts(), self.ts(30))

    def payments(self) -> Iterator[str]:
        payment_id = 0
        invoice_id = 0
        for wid, _date, suppliers in self._wedding_ids():
            for _sid in suppliers:
                invoice_id += 1
                for _ in range(self.rng.randrange(1, 3)):
                    payment_id += 1
                    yield _line(payment_id, invoice_id, wid, self.rng.randrange(10_000, 400_000),
                                self.rng.choice(("card", "bank_transfer", "bank_transfer", "cheque")),
                                f"pay_{self.rng.getrandbits(64):016x}", self.ts(), self.ts(), self.ts(30))

    def forms(self) -> Iterator[str]:
        form_id = 0
        for sid in range(1, self.scale.suppliers + 1):
            ids = []
            for title in ("Questionnaire", "Final details"):
                form_id += 1
                ids.append(form_id)
                fields = [{"name": f"q{n}", "label": self.sentence(6), "type": self.rng.choice(("text", "choice"))}
                          for n in range(8)]
                yield _line(form_id, sid, f"{title}", json.dumps(fields), self.ts(), self.ts(30))
            self.forms_by_supplier[sid] = ids

    def form_responses(self) -> Iterator[str]:
        response_id = 0
        for wid, _date, suppliers in self._wedding_ids():
            for sid in suppliers[:4]:
                response_id += 1
                answers = {f"q{n}": self.sentence(self.rng.randrange(3, 20)) for n in range(8)}
                yield _line(response_id, self.rng.choice(self.forms_by_supplier[sid]), wid, json.dumps(answers),
                            self.ts(), self.ts(), self.ts(30))


# Load order follows the foreign keys.
TABLE_COLUMNS: dict[str, str] = {
    "suppliers": "supplier_id, business_name, category, contact_name, email, phone, city, country, website, "
                 "created_at, updated_at",
    "supplier_services": "service_id, supplier_id, name, description, base_price_cents, created_at, updated_at",
    "supplier_packages": "package_id, supplier_id, name, price_cents, inclusions, is_active, created_at, updated_at",
    "clients": "client_id, partner_one_name, partner_two_name, email, phone, city, marketing_opt_in, created_at, "
               "updated_at",
    "client_contacts": "contact_id, client_id, name, relationship, email, phone, created_at, updated_at",
    "weddings": "wedding_id, client_id, wedding_date, venue_name, venue_city, status, guest_count, budget_cents, "
                "currency, notes, created_at, updated_at",
    "wedding_vendors": "wedding_id, supplier_id, package_id, role, status, booked_at, created_at, updated_at",
    "contracts": "contract_id, wedding_id, supplier_id, status, amount_cents, terms, signed_at, created_at, "
                 "updated_at",
    "reviews": "review_id, supplier_id, wedding_id, rating, title, body, published, created_at, updated_at",
    "guests": "guest_id, wedding_id, first_name, last_name, email, side, rsvp_status, dietary, table_number, "
              "plus_one, created_at, updated_at",
    "timeline_events": "event_id, wedding_id, supplier_id, starts_at, ends_at, title, location, notes, created_at, "
                       "updated_at",
    "tasks": "task_id, wedding_id, assigned_supplier_id, title, due_date, status, completed_at, created_at, "
             "updated_at",
    "invoices": "invoice_id, wedding_id, supplier_id, invoice_number, amount_cents, currency, due_date, status, "
                "created_at, updated_at",
    "payments": "payment_id, invoice_id, wedding_id, amount_cents, method, provider_reference, paid_at, "
                "created_at, updated_at",
    "forms": "form_id, supplier_id, title, fields, created_at, updated_at",
    "form_responses": "response_id, form_id, wedding_id, answers, submitted_at, created_at, updated_at",
}
ASSET_TABLES = ("documents", "photos")
LoadProgress = Callable[[str, int], None]  # ("tables" | "assets", bytes just loaded or written)
SCHEMA = "wedsync"


def _chunks(lines: Iterator[str], size: int = 1 << 20) -> Iterator[bytes]:
    buffer: list[str] = []
    length = 0
    for line in lines:
        buffer.append(line)
        length += len(line)
        if length >= size:
            yield "".join(buffer).encode()
            buffer, length = [], 0
    if buffer:
        yield "".join(buffer).encode()


def _jpeg_like(rng: random.Random, size: int) -> bytes:
    # A JPEG header and entropy-coded-looking bytes: photos do not compress, and neither does this.
    header = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return header + rng.randbytes(max(0, size - len(header) - 2)) + b"\xff\xd9"


def _pdf_like(rng: random.Random, size: int, title: str) -> bytes:
    body = [f"%PDF-1.7\n% {title}\n".encode()]
    length = len(body[0])
    obj = 1
    while length < size - 6:
        text = " ".join(rng.choices(WORDS, k=40))
        chunk = f"{obj} 0 obj\n<< /Length {len(text)} >>\nstream\n{text}\nendstream\nendobj\n".encode()
        body.append(chunk)
        length += len(chunk)
        obj += 1
    body.append(b"%%EOF\n")
    return b"".join(body)


def _write_assets(gen: _Generator, asset_dir: Path, progress: LoadProgress | None = None
                  ) -> tuple[list[str], list[str]]:
    """Write asset files; returns COPY lines for `documents` and `photos`."""
    rng = random.Random(gen.scale.seed + 1)  # assets do not disturb the table stream
    scale = gen.scale.asset_size_scale
    weddings = gen.scale.weddings
    photo_lines, document_lines = [], []
    for pid in range(1, gen.scale.photo_count + 1):
        wid = rng.randrange(1, weddings + 1)
        rel = f"weddings/{wid}/photos/IMG_{pid:06d}.jpg"
        data = _jpeg_like(rng, int(rng.randrange(1_500_000, 4_000_000) * scale))
        _write_file(asset_dir / rel, data, progress)
        photo_lines.append(_line(pid, wid, rng.choice(gen.wedding_suppliers[wid - 1]), rel, "image/jpeg", len(data),
                                 hashlib.sha256(data).hexdigest(), 4000, 3000, gen.ts(), gen.ts(), gen.ts(30)))
    for did in range(1, gen.scale.document_count + 1):
        wid = rng.randrange(1, weddings + 1)
        kind = rng.choice(("contract", "invoice", "floor_plan", "menu", "other"))
        rel = f"weddings/{wid}/documents/{kind}_{did:06d}.pdf"
        data = _pdf_like(rng, int(rng.randrange(50_000, 400_000) * scale), f"{kind} for wedding {wid}")
        _write_file(asset_dir / rel, data, progress)
        document_lines.append(_line(did, wid, rng.choice(gen.wedding_suppliers[wid - 1]), kind, rel,
                                    "application/pdf", len(data), hashlib.sha256(data).hexdigest(),
                                    gen.ts(), gen.ts(30)))
    return document_lines, photo_lines


def _write_file(path: Path, data: bytes, progress: LoadProgress | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if progress is not None:
        progress("assets", len(data))


@dataclass
class LoadReport:
    rows: dict[str, int]
    seconds: float  # generating and COPYing the table rows (the rows/s figure)
    asset_files: int
    asset_bytes: int
    asset_seconds: float

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def rows_per_second(self) -> float:
        return self.total_rows / self.seconds if self.seconds else 0.0


def create_schema(conn) -> None:
    """(Re)create the WedSync schema from include/sql (drops existing data)."""
    conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    conn.execute((SQL_DIR / "wedsync_schema.sql").read_text())


def load(conn, scale: Scale, asset_dir: Path, today: dt.date | None = None, owner: str | None = None,
         progress: LoadProgress | None = None) -> LoadReport:
    """Create the schema and load demo data; replaces what the schema and `asset_dir` held.

    `conn` is a psycopg 3 connection. When it is a superuser's, pass `owner`: the schema is created as that
    role and rows load with `session_replication_role = replica`, which skips the per-row foreign-key
    triggers (as `pg_restore --disable-triggers` does) -- the generator writes consistent keys by
    construction, and the FK checks would otherwise halve the load rate.

    `progress("tables" | "assets", nbytes)` is told of every chunk of rows COPYed and every file written.
    """
    gen = _Generator(scale, today or dt.date.today())
    shutil.rmtree(asset_dir, ignore_errors=True)
    started = time.perf_counter()
    rows: dict[str, int] = {}
    with conn.transaction():
        if owner:
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        create_schema(conn)
        with conn.cursor() as cur:
            for table, columns in TABLE_COLUMNS.items():
                count = 0

                def counted(lines: Iterator[str]) -> Iterator[str]:
                    nonlocal count
                    for line in lines:
                        count += 1
                        yield line

                with cur.copy(f"COPY {SCHEMA}.{table} ({columns}) FROM STDIN") as copy:
                    for chunk in _chunks(counted(getattr(gen, table)())):
                        copy.write(chunk)
                        if progress is not None:
                            progress("tables", len(chunk))
                rows[table] = count
            seconds = time.perf_counter() - started
            documents, photos = _write_assets(gen, asset_dir, progress)
            with cur.copy(f"COPY {SCHEMA}.documents (document_id, wedding_id, supplier_id, kind, file_path, "
                          "content_type, size_bytes, sha256, created_at, updated_at) FROM STDIN") as copy:
                copy.write("".join(documents).encode())
            with cur.copy(f"COPY {SCHEMA}.photos (photo_id, wedding_id, supplier_id, file_path, content_type, "
                          "size_bytes, sha256, width, height, taken_at, created_at, updated_at) FROM STDIN") as copy:
                copy.write("".join(photos).encode())
            rows["documents"], rows["photos"] = len(documents), len(photos)
            # Explicit ids were loaded: move every identity sequence past them.
            for table in (*TABLE_COLUMNS, *ASSET_TABLES):
                cur.execute(
                    "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attidentity <> ''",
                    (f"{SCHEMA}.{table}",))
                for (column,) in cur.fetchall():
                    cur.execute(f"SELECT setval(pg_get_serial_sequence('{SCHEMA}.{table}', '{column}'), "
                                f"COALESCE((SELECT max({column}) FROM {SCHEMA}.{table}), 0) + 1, false)")
        conn.execute("ANALYZE")
    asset_bytes = sum(p.stat().st_size for p in asset_dir.rglob("*") if p.is_file())
    return LoadReport(rows, seconds, len(documents) + len(photos), asset_bytes,
                      time.perf_counter() - started - seconds)
