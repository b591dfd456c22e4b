#!/usr/bin/env python3
"""Deterministic benchmark data generator for cairn (stdlib only).

Modes
-----
nightly  Write N nightly pg_dump-style plain SQL dumps (night-01.sql, ...) of
         one evolving shop database.  Between nights rows are appended
         (orders/events grow ~1-2 %), a scattered ~0.5-1 % of existing rows is
         updated, a few rows are deleted and now and then a small schema change
         happens.  Rows inside each COPY block are ordered by primary key.

tree     Write a file tree of mixed content: many small text/config files,
         source-like files, incompressible medium binaries, large compressible
         logs, duplicated files, nested directories.

mutate   Change a tree like a day of work: edit ~2 % of the files (in the
         middle), append to every log, add a few files, delete a few.
         Deterministic: the same tree + seed always gives the same result.

Examples
--------
  python3 bench/gen_data.py nightly --out DIR --nights 7 --size-mb 200 --seed 1
  python3 bench/gen_data.py tree    --out DIR --size-mb 2000 --seed 1
  python3 bench/gen_data.py mutate  --tree DIR --seed 2
"""

import argparse
import bisect
import datetime
import os
import random
import shutil
import sys
import time

MB = 1_000_000

# --------------------------------------------------------------------------
# shared vocabulary
# --------------------------------------------------------------------------

FIRST = ("James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth "
         "William Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen "
         "Christopher Lisa Daniel Nancy Matthew Betty Anthony Sandra Mark Ashley "
         "Paul Emily Steven Donna Andrew Michelle Joshua Carol Kenneth Amanda Kevin "
         "Melissa Brian Deborah George Stephanie Timothy Rebecca Ronald Laura Jason "
         "Sharon Jeffrey Cynthia Ryan Kathleen Jacob Amy Lukas Sofia Mateo Ingrid "
         "Yuki Hiroshi Olga Dmitri Amara Kwame Priya Arjun Chen Wei Fatima Omar").split()
LAST = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez "
        "Hernandez Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin "
        "Lee Perez Thompson White Harris Sanchez Clark Ramirez Lewis Robinson Walker "
        "Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams Nelson "
        "Baker Hall Rivera Campbell Mitchell Carter Roberts Mueller Schmidt Schneider "
        "Fischer Weber Meyer Wagner Becker Schulz Hoffmann Rossi Russo Ferrari Esposito "
        "Bianchi Romano Tanaka Suzuki Sato Kowalski Nowak Novak Horvat Jensen Nielsen").split()
DOMAINS = ("example.com mail.example.org inbox.test corp.example.net webmail.example "
           "post.example.de kunden.example.at example.co.uk shop.example.fr").split()
STREETS = ("Main St|Oak Ave|Pine Rd|Maple Dr|Cedar Ln|Elm St|Lake View|Hill Rd|"
           "Park Ave|Station Rd|High St|Church Ln|Mill Rd|River Walk|Bahnhofstr.|"
           "Hauptstr.|Rue de la Paix|Via Roma|Calle Mayor|Kings Rd").split("|")
CITIES = ("Springfield|Riverside|Fairview|Madison|Georgetown|Arlington|Salem|"
          "Bristol|Clinton|Franklin|Berlin|Hamburg|Munich|Vienna|Zurich|Paris|Lyon|"
          "Milan|Rome|Madrid|Lisbon|Dublin|Leeds|Oslo|Krakow|Prague").split("|")
COUNTRIES = [
    ("AT", "Austria", "EU"), ("BE", "Belgium", "EU"), ("CA", "Canada", "NA"),
    ("CH", "Switzerland", "EU"), ("CZ", "Czechia", "EU"), ("DE", "Germany", "EU"),
    ("DK", "Denmark", "EU"), ("ES", "Spain", "EU"), ("FI", "Finland", "EU"),
    ("FR", "France", "EU"), ("GB", "United Kingdom", "EU"), ("IE", "Ireland", "EU"),
    ("IT", "Italy", "EU"), ("JP", "Japan", "AS"), ("NL", "Netherlands", "EU"),
    ("NO", "Norway", "EU"), ("PL", "Poland", "EU"), ("PT", "Portugal", "EU"),
    ("SE", "Sweden", "EU"), ("US", "United States", "NA"), ("AU", "Australia", "OC"),
    ("BR", "Brazil", "SA"), ("IN", "India", "AS"), ("MX", "Mexico", "NA"),
]
CURRENCIES = [("EUR", "Euro", "€", 2), ("USD", "US Dollar", "$", 2),
              ("GBP", "Pound Sterling", "£", 2), ("CHF", "Swiss Franc", "CHF", 2),
              ("JPY", "Yen", "¥", 0), ("SEK", "Swedish Krona", "kr", 2),
              ("PLN", "Zloty", "zł", 2), ("NOK", "Norwegian Krone", "kr", 2)]
ORDER_STATUSES = ["pending", "paid", "packed", "shipped", "delivered", "cancelled", "refunded"]
EVENT_TYPES = ["login", "logout", "page_view", "page_view", "page_view", "search",
               "search", "add_to_cart", "remove_from_cart", "checkout_started",
               "order_placed", "payment_authorized", "password_changed",
               "address_updated", "api_call", "api_call", "api_call", "email_opened"]
USER_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
    "shop-app/4.12.1 (iOS 17.2; iPhone15,2)", "shop-app/4.12.0 (Android 14; SM-S918B)",
    "python-requests/2.31.0", "curl/8.5.0", "partner-sync/2.3 (+https://partner.example)",
]
API_PATHS = ["/api/v2/orders", "/api/v2/orders/{}", "/api/v2/products/{}", "/api/v2/cart",
             "/api/v2/accounts/{}", "/api/v2/search", "/checkout/{}", "/products/{}",
             "/category/{}", "/api/v2/payments/{}", "/", "/account/orders"]
CATEGORY_NAMES = ("Electronics|Computers|Laptops|Phones|Accessories|Cables|Audio|Headphones|"
                  "Home|Kitchen|Furniture|Lighting|Garden|Tools|Outdoor|Sports|Cycling|"
                  "Running|Camping|Books|Fiction|Non-fiction|Comics|Toys|Games|Board games|"
                  "Clothing|Shoes|Bags|Watches|Beauty|Health|Grocery|Coffee|Tea|Pets|"
                  "Office|Stationery|Printers|Storage|Networking|Cameras|Drones|Music|"
                  "Instruments|Vinyl|Baby|Automotive|Crafts|Party").split("|")
ADJ = ("Premium Classic Compact Wireless Ergonomic Portable Smart Vintage Eco "
       "Deluxe Ultra Mini Pro Essential Heavy-duty Lightweight Modular Silent").split()
NOUN = ("Lamp Chair Kettle Backpack Speaker Keyboard Mouse Monitor Charger Bottle "
        "Jacket Sneaker Tent Drill Grinder Blender Router Camera Notebook Pen Mug "
        "Headset Cable Adapter Stand Shelf Bike Helmet Watch Wallet").split()
WORDS = ("the of and to in is for on with as by at from that this are be or it an "
         "was which not have has will can all more new one data system user file time "
         "service request value error config order account server client update table "
         "index query backup release build version network storage memory process "
         "thread module function result status default option support report review "
         "customer product payment invoice shipping delivery warehouse inventory").split()


def make_day_strings(n_days, start=datetime.date(2022, 1, 3)):
    return [(start + datetime.timedelta(days=d)).isoformat() for d in range(n_days)]


HMS = [f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60)]


# --------------------------------------------------------------------------
# nightly: pg_dump-like database dumps
# --------------------------------------------------------------------------

HISTORY_DAYS = 900          # days of history before night 1


class Table:
    """One table: DDL + rows (tab-separated COPY lines, ordered by id)."""

    def __init__(self, name, columns, pk="id", seq=True):
        self.name = name
        self.columns = list(columns)     # [(name, sqltype)]
        self.pk = pk
        self.seq = seq
        self.rows = []
        self.next_id = 1
        self.extra = []                  # added columns: (name, type, default literal, copy value)
        self.indexes = []                # (index name, column list)
        self.fks = []                    # (constraint name, column, ref table)

    def suffix(self):
        return "".join("\t" + e[3] for e in self.extra)

    def all_columns(self):
        return self.columns + [(e[0], e[1] + (f" DEFAULT {e[2]}" if e[2] else "")) for e in self.extra]


class ShopDB:
    def __init__(self, seed, size_mb, nights, churn=1.0):
        self.rng = random.Random(seed)
        self.churn = churn               # multiplier for the update/delete rates
        self.nights = nights
        self.days = make_day_strings(HISTORY_DAYS + nights + 3)
        self.day = HISTORY_DAYS          # "today" (day index) while generating history
        self.size_target = size_mb * MB
        self._define_tables()

    # ---- schema -------------------------------------------------------
    def _define_tables(self):
        T = {}
        T["countries"] = Table("countries", [("code", "character(2) NOT NULL"),
                                             ("name", "text NOT NULL"),
                                             ("region", "text NOT NULL")], pk="code", seq=False)
        T["currencies"] = Table("currencies", [("code", "character(3) NOT NULL"),
                                               ("name", "text NOT NULL"),
                                               ("symbol", "text NOT NULL"),
                                               ("minor_units", "smallint DEFAULT 2 NOT NULL")],
                                pk="code", seq=False)
        T["order_statuses"] = Table("order_statuses", [("id", "smallint NOT NULL"),
                                                       ("code", "text NOT NULL"),
                                                       ("is_final", "boolean DEFAULT false NOT NULL")],
                                    seq=False)
        T["product_categories"] = Table("product_categories", [
            ("id", "integer NOT NULL"), ("parent_id", "integer"),
            ("name", "text NOT NULL"), ("slug", "text NOT NULL")])
        T["products"] = Table("products", [
            ("id", "bigint NOT NULL"), ("sku", "text NOT NULL"), ("name", "text NOT NULL"),
            ("category_id", "integer NOT NULL"), ("price", "numeric(12,2) NOT NULL"),
            ("weight_grams", "integer"), ("active", "boolean DEFAULT true NOT NULL"),
            ("description", "text"), ("created_at", "timestamp with time zone NOT NULL"),
            ("updated_at", "timestamp with time zone NOT NULL")])
        T["accounts"] = Table("accounts", [
            ("id", "bigint NOT NULL"), ("email", "text NOT NULL"), ("full_name", "text NOT NULL"),
            ("country_code", "character(2) NOT NULL"), ("balance", "numeric(14,2) DEFAULT 0 NOT NULL"),
            ("currency", "character(3) NOT NULL"), ("status", "text DEFAULT 'active'::text NOT NULL"),
            ("marketing_opt_in", "boolean DEFAULT false NOT NULL"),
            ("created_at", "timestamp with time zone DEFAULT now() NOT NULL"),
            ("updated_at", "timestamp with time zone DEFAULT now() NOT NULL"),
            ("last_login_at", "timestamp with time zone"), ("notes", "text")])
        T["orders"] = Table("orders", [
            ("id", "bigint NOT NULL"), ("account_id", "bigint NOT NULL"), ("status", "text NOT NULL"),
            ("currency", "character(3) NOT NULL"), ("subtotal", "numeric(12,2) NOT NULL"),
            ("tax", "numeric(12,2) NOT NULL"), ("shipping", "numeric(12,2) NOT NULL"),
            ("total", "numeric(12,2) NOT NULL"), ("shipping_address", "text NOT NULL"),
            ("created_at", "timestamp with time zone DEFAULT now() NOT NULL"),
            ("updated_at", "timestamp with time zone DEFAULT now() NOT NULL"),
            ("tracking_number", "text")])
        T["order_items"] = Table("order_items", [
            ("id", "bigint NOT NULL"), ("order_id", "bigint NOT NULL"), ("product_id", "bigint NOT NULL"),
            ("quantity", "integer NOT NULL"), ("unit_price", "numeric(12,2) NOT NULL"),
            ("discount", "numeric(12,2) DEFAULT 0 NOT NULL")])
        T["events"] = Table("events", [
            ("id", "bigint NOT NULL"), ("occurred_at", "timestamp with time zone NOT NULL"),
            ("account_id", "bigint"), ("event_type", "text NOT NULL"), ("ip", "inet"),
            ("user_agent", "text"), ("request_id", "uuid NOT NULL"), ("payload", "jsonb NOT NULL")])
        T["accounts"].indexes = [("accounts_email_key", "email", True),
                                 ("accounts_created_at_idx", "created_at", False)]
        T["orders"].indexes = [("orders_account_id_idx", "account_id", False),
                               ("orders_status_created_at_idx", "status, created_at", False)]
        T["order_items"].indexes = [("order_items_order_id_idx", "order_id", False)]
        T["events"].indexes = [("events_account_id_occurred_at_idx", "account_id, occurred_at", False),
                               ("events_occurred_at_idx", "occurred_at", False)]
        T["products"].indexes = [("products_sku_key", "sku", True)]
        T["accounts"].fks = [("accounts_country_code_fkey", "country_code", "countries(code)"),
                             ("accounts_currency_fkey", "currency", "currencies(code)")]
        T["orders"].fks = [("orders_account_id_fkey", "account_id", "accounts(id)")]
        T["order_items"].fks = [("order_items_order_id_fkey", "order_id", "orders(id) ON DELETE CASCADE"),
                                ("order_items_product_id_fkey", "product_id", "products(id)")]
        T["products"].fks = [("products_category_id_fkey", "category_id", "product_categories(id)")]
        self.T = T

    # ---- helpers ------------------------------------------------------
    def ts_at(self, t):
        """t = fractional seconds since day 0 -> timestamptz text."""
        d = int(t // 86400)
        s = t - d * 86400
        si = int(s)
        return f"{self.days[d]} {HMS[si]}.{int((s - si) * 1e6):06d}+00"

    def ts_today(self):
        return self.ts_at(self.day * 86400 + self.rng.random() * 86399)

    # ---- row generators (return list of lines) ------------------------
    def gen_accounts(self, n, t0, t1):
        r = self.rng.random
        T = self.T["accounts"]
        out = []
        sfx = T.suffix()
        span = (t1 - t0) / max(n, 1)
        nf, nl, nd, nc = len(FIRST), len(LAST), len(DOMAINS), len(COUNTRIES)
        for k in range(n):
            i = T.next_id
            T.next_id += 1
            fn = FIRST[int(r() * nf)]
            ln = LAST[int(r() * nl)]
            cc = COUNTRIES[int(r() * nc)][0]
            cur = "USD" if cc in ("US", "CA", "MX", "BR", "AU", "IN", "JP") else (
                "GBP" if cc == "GB" else "CHF" if cc == "CH" else "EUR")
            created = t0 + (k + r()) * span
            x = r()
            status = "active" if x < 0.93 else ("suspended" if x < 0.97 else "closed")
            ll = "\\N" if r() < 0.08 else self.ts_at(min(created + r() * 86400 * 60, self.day * 86400 + 86000))
            notes = "\\N" if r() < 0.9 else f"VIP since {self.days[int(created // 86400)]}; prefers {CITIES[int(r() * len(CITIES))]} pickup"
            out.append(f"{i}\t{fn.lower()}.{ln.lower()}{i}@{DOMAINS[int(r() * nd)]}\t{fn} {ln}\t{cc}\t"
                       f"{r() * 2500:.2f}\t{cur}\t{status}\t{'t' if r() < 0.35 else 'f'}\t"
                       f"{self.ts_at(created)}\t{self.ts_at(min(created + r() * 3600, self.day * 86400 + 86399.0))}\t{ll}\t{notes}{sfx}")
        return out

    def _address(self, r):
        c = COUNTRIES[int(r() * len(COUNTRIES))]
        return (f"{int(r() * 300) + 1} {STREETS[int(r() * len(STREETS))]}, "
                f"{int(r() * 90000) + 10000} {CITIES[int(r() * len(CITIES))]}, {c[1]}")

    def _status_for_age(self, age_days, r):
        if age_days < 0.5:
            return "pending" if r() < 0.6 else "paid"
        if age_days < 2:
            return ("paid", "packed", "shipped")[int(r() * 3)]
        if age_days < 7:
            return "shipped" if r() < 0.4 else "delivered"
        x = r()
        return "delivered" if x < 0.92 else ("cancelled" if x < 0.97 else "refunded")

    def gen_orders_with_items(self, n, t0, t1):
        r = self.rng.random
        O, I = self.T["orders"], self.T["order_items"]
        osfx, isfx = O.suffix(), I.suffix()
        n_acc = max(self.T["accounts"].next_id - 1, 1)
        n_prod = max(self.T["products"].next_id - 1, 1)
        now = self.day * 86400 + 86399
        span = (t1 - t0) / max(n, 1)
        orders, items = [], []
        for k in range(n):
            oid = O.next_id
            O.next_id += 1
            created = t0 + (k + r()) * span
            status = self._status_for_age((now - created) / 86400, r)
            nitems = 1 + int(r() * r() * 6)
            sub = 0.0
            for _ in range(nitems):
                iid = I.next_id
                I.next_id += 1
                q = 1 + int(r() * r() * 4)
                price = 2 + int(r() * r() * 40000) / 100
                disc = 0.0 if r() < 0.85 else round(price * q * 0.1, 2)
                sub += price * q - disc
                items.append(f"{iid}\t{oid}\t{1 + int(r() * n_prod)}\t{q}\t{price:.2f}\t{disc:.2f}{isfx}")
            tax = sub * 0.19
            ship = 0.0 if sub > 50 else 4.99
            trk = f"1Z{int(r() * 1e12):012d}" if status in ("shipped", "delivered") else "\\N"
            orders.append(f"{oid}\t{1 + int(r() * n_acc)}\t{status}\tEUR\t{sub:.2f}\t{tax:.2f}\t"
                          f"{ship:.2f}\t{sub + tax + ship:.2f}\t{self._address(r)}\t{self.ts_at(created)}\t"
                          f"{self.ts_at(min(created + r() * 86400 * 3, now))}\t{trk}{osfx}")
        return orders, items

    def gen_events(self, n, t0, t1):
        r = self.rng.random
        E = self.T["events"]
        sfx = E.suffix()
        n_acc = max(self.T["accounts"].next_id - 1, 1)
        span = (t1 - t0) / max(n, 1)
        getrandbits = self.rng.getrandbits
        out = []
        ne, nu, npth = len(EVENT_TYPES), len(USER_AGENTS), len(API_PATHS)
        for k in range(n):
            eid = E.next_id
            E.next_id += 1
            t = t0 + (k + r()) * span
            acc = "\\N" if r() < 0.15 else str(1 + int(r() * n_acc))
            et = EVENT_TYPES[int(r() * ne)]
            u = f"{getrandbits(128):032x}"
            path = API_PATHS[int(r() * npth)].format(int(r() * 200000))
            st = 200 if r() < 0.93 else (404 if r() < 0.6 else 500)
            out.append(f"{eid}\t{self.ts_at(t)}\t{acc}\t{et}\t{int(r() * 223) + 1}.{int(r() * 256)}."
                       f"{int(r() * 256)}.{int(r() * 254) + 1}\t{USER_AGENTS[int(r() * nu)]}\t"
                       f"{u[:8]}-{u[8:12]}-4{u[13:16]}-a{u[17:20]}-{u[20:]}\t"
                       f"{{\"ms\": {int(r() * r() * 900) + 3}, \"path\": \"{path}\", \"method\": "
                       f"\"{'GET' if r() < 0.8 else 'POST'}\", \"status\": {st}, \"session\": \"{u[:16]}\"}}{sfx}")
        return out

    def gen_products(self, n, t0, t1):
        r = self.rng.random
        P = self.T["products"]
        sfx = P.suffix()
        ncat = len(self.T["product_categories"].rows)
        span = (t1 - t0) / max(n, 1)
        out = []
        for k in range(n):
            pid = P.next_id
            P.next_id += 1
            created = t0 + (k + r()) * span
            a, b = ADJ[int(r() * len(ADJ))], NOUN[int(r() * len(NOUN))]
            desc = " ".join(WORDS[int(r() * len(WORDS))] for _ in range(8 + int(r() * 30)))
            out.append(f"{pid}\tSKU-{pid:07d}-{int(r() * 1e4):04d}\t{a} {b} {int(r() * 900) + 100}\t"
                       f"{1 + int(r() * ncat)}\t{1 + int(r() * r() * 50000) / 100:.2f}\t"
                       f"{int(r() * 5000) + 50}\t{'t' if r() < 0.95 else 'f'}\t{desc}\t"
                       f"{self.ts_at(created)}\t{self.ts_at(min(created + r() * 86400 * 30, self.day * 86400 + 86399.0))}{sfx}")
        return out

    # ---- initial history ---------------------------------------------
    def _populate(self, scale):
        T = self.T
        T["countries"].rows = [f"{c}\t{n}\t{reg}" for c, n, reg in sorted(COUNTRIES)]
        T["currencies"].rows = [f"{c}\t{n}\t{s}\t{m}" for c, n, s, m in sorted(CURRENCIES)]
        T["order_statuses"].rows = [f"{i + 1}\t{s}\t{'t' if s in ('delivered', 'cancelled', 'refunded') else 'f'}"
                                    for i, s in enumerate(ORDER_STATUSES)]
        cats = []
        for i, name in enumerate(CATEGORY_NAMES):
            parent = "\\N" if i % 6 == 0 else str((i // 6) * 6 + 1)
            cats.append(f"{i + 1}\t{parent}\t{name}\t{name.lower().replace(' ', '-')}")
        T["product_categories"].rows = cats
        T["product_categories"].next_id = len(cats) + 1
        t_end = HISTORY_DAYS * 86400.0
        n_acc = max(int(scale), 10)
        T["products"].rows = self.gen_products(max(n_acc // 8, 50), 0.0, t_end)
        T["accounts"].rows = self.gen_accounts(n_acc, 0.0, t_end)
        o, it = self.gen_orders_with_items(int(n_acc * 2.4), 0.0, t_end)
        T["orders"].rows, T["order_items"].rows = o, it
        T["events"].rows = self.gen_events(int(n_acc * 3.2), 0.0, t_end)

    def populate(self):
        # Calibrate: generate a small sample, measure bytes per account, scale.
        state = self.rng.getstate()
        self._populate(1500)
        sample = sum(sum(len(x) + 1 for x in t.rows) for t in self.T.values())
        self.rng.setstate(state)
        self._define_tables()
        scale = 1500 * max(self.size_target - 40_000, 10_000) / sample
        self._populate(scale)
        self.day = HISTORY_DAYS

    # ---- one day of changes --------------------------------------------
    def advance_day(self, night_no, log):
        rng = self.rng
        r = rng.random
        T = self.T
        self.day += 1
        t0, t1 = self.day * 86400.0, self.day * 86400.0 + 86399.0
        stats = {}

        # 1. updates of existing rows (scattered), before appending new rows
        acc = T["accounts"].rows
        c = self.churn
        n = int(len(acc) * (0.006 + r() * 0.004) * c)
        for _ in range(n):
            i = int(r() * len(acc))
            f = acc[i].split("\t")
            bal = float(f[4]) + (r() - 0.45) * 120
            f[4] = f"{max(bal, 0):.2f}"
            now = self.ts_today()
            f[9] = now
            if r() < 0.7:
                f[10] = now
            if r() < 0.01:
                f[6] = "suspended" if f[6] == "active" else "active"
            acc[i] = "\t".join(f)
        stats["accounts_upd"] = n

        orders = T["orders"].rows
        n_recent = max(int(len(orders) * 0.03), 1)
        n = int(len(orders) * (0.005 + r() * 0.004) * c)
        progress = {"pending": "paid", "paid": "packed", "packed": "shipped",
                    "shipped": "delivered", "delivered": "delivered"}
        for _ in range(n):
            if r() < 0.6:
                i = len(orders) - 1 - int(r() * n_recent)
            else:
                i = int(r() * len(orders))
            f = orders[i].split("\t")
            if f[2] in progress and r() < 0.9:
                f[2] = progress[f[2]]
                if f[2] == "shipped" and f[11] == "\\N":
                    f[11] = f"1Z{int(r() * 1e12):012d}"
            elif f[2] == "delivered" and r() < 0.3:
                f[2] = "refunded"
            else:
                f[8] = self._address(r)
            f[10] = self.ts_today()
            orders[i] = "\t".join(f)
        stats["orders_upd"] = n

        items = T["order_items"].rows
        n = int(len(items) * 0.0005 * c)
        for _ in range(n):
            i = int(r() * len(items))
            f = items[i].split("\t")
            f[3] = str(max(1, int(f[3]) + (1 if r() < 0.5 else -1)))
            items[i] = "\t".join(f)
        stats["items_upd"] = n

        prods = T["products"].rows
        n = int(len(prods) * 0.008 * c)
        for _ in range(n):
            i = int(r() * len(prods))
            f = prods[i].split("\t")
            f[4] = f"{float(f[4]) * (0.9 + r() * 0.25):.2f}"
            if r() < 0.05:
                f[6] = "f" if f[6] == "t" else "t"
            f[9] = self.ts_today()
            prods[i] = "\t".join(f)
        stats["products_upd"] = n

        # 2. deletes: a few cancelled orders (with their items), a few events, an account
        def order_id_of_item(line):
            return int(line.split("\t", 2)[1])
        n_del = int(len(orders) * 0.0002 * c)
        for _ in range(n_del):
            i = int(r() * len(orders))
            oid = int(orders[i].split("\t", 1)[0])
            del orders[i]
            lo = bisect.bisect_left(items, oid, key=order_id_of_item)
            hi = bisect.bisect_right(items, oid, key=order_id_of_item)
            del items[lo:hi]
        ev = T["events"].rows
        for _ in range(int(len(ev) * 0.0001 * c)):
            del ev[int(r() * len(ev))]
        stats["orders_del"] = n_del

        # 3. new rows (growth)
        g_acc = 0.002 + r() * 0.003
        acc.extend(self.gen_accounts(max(int(len(acc) * g_acc), 1), t0, t1))
        g_ord = 0.01 + r() * 0.01
        o, it = self.gen_orders_with_items(max(int(len(orders) * g_ord), 1), t0, t1)
        orders.extend(o)
        items.extend(it)
        g_ev = 0.012 + r() * 0.008
        ne = max(int(len(ev) * g_ev), 1)
        ev.extend(self.gen_events(ne, t0, t1))
        if r() < 0.3:
            prods.extend(self.gen_products(max(int(len(prods) * 0.002), 1), t0, t1))
        stats.update(orders_new=len(o), items_new=len(it), events_new=ne)

        # 4. occasionally a small schema change
        if night_no >= 2 and r() < 0.3:
            stats["schema"] = self.schema_change()
        log(f"  night {night_no:02d} changes: " + ", ".join(f"{k}={v}" for k, v in stats.items()))

    def schema_change(self):
        T = self.T
        done = {e[0] for t in T.values() for e in t.extra} | {t.name for t in T.values()} | \
               {ix[0] for t in T.values() for ix in t.indexes}
        options = []
        if "is_featured" not in done:
            options.append("products.is_featured")
        if "vat_rate" not in done:
            options.append("countries.vat_rate")
        if "shipping_methods" not in done:
            options.append("shipping_methods")
        if "orders_tracking_number_idx" not in done:
            options.append("orders_tracking_number_idx")
        if "events_event_type_idx" not in done:
            options.append("events_event_type_idx")
        if not options:
            return "none"
        ch = options[int(self.rng.random() * len(options))]
        if ch == "products.is_featured":
            p = T["products"]
            p.extra.append(("is_featured", "boolean", "false NOT NULL", "f"))
            p.rows = [x + "\tf" for x in p.rows]
        elif ch == "countries.vat_rate":
            c = T["countries"]
            c.extra.append(("vat_rate", "numeric(5,2)", "", "\\N"))
            c.rows = [x + "\t" + (f"{15 + sum(map(ord, x[:2])) % 12}.00" if x[:2] != "US" else "\\N")
                      for x in c.rows]
        elif ch == "shipping_methods":
            t = Table("shipping_methods", [("id", "integer NOT NULL"), ("code", "text NOT NULL"),
                                           ("name", "text NOT NULL"), ("price", "numeric(8,2) NOT NULL")])
            t.rows = ["1\tstd\tStandard (3-5 days)\t4.99", "2\texp\tExpress (1-2 days)\t9.99",
                      "3\tpickup\tStore pickup\t0.00", "4\tfreight\tFreight\t49.00"]
            t.next_id = 5
            T["shipping_methods"] = t
        elif ch == "orders_tracking_number_idx":
            T["orders"].indexes.append(("orders_tracking_number_idx", "tracking_number", False))
        elif ch == "events_event_type_idx":
            T["events"].indexes.append(("events_event_type_idx", "event_type", False))
        return ch

    # ---- writer ----------------------------------------------------------
    def write_dump(self, path):
        T = self.T
        names = sorted(T)
        w = []
        w.append("--\n-- PostgreSQL database dump\n--\n\n"
                 "-- Dumped from database version 15.5 (Debian 15.5-1.pgdg120+1)\n"
                 "-- Dumped by pg_dump version 15.5 (Debian 15.5-1.pgdg120+1)\n\n"
                 "SET statement_timeout = 0;\nSET lock_timeout = 0;\n"
                 "SET idle_in_transaction_session_timeout = 0;\nSET client_encoding = 'UTF8';\n"
                 "SET standard_conforming_strings = on;\n"
                 "SELECT pg_catalog.set_config('search_path', '', false);\n"
                 "SET check_function_bodies = false;\nSET xmloption = content;\n"
                 "SET client_min_messages = warning;\nSET row_security = off;\n\n"
                 "SET default_tablespace = '';\n\nSET default_table_access_method = heap;\n\n")
        for n in names:
            t = T[n]
            cols = ",\n".join(f"    {c} {ty}" for c, ty in t.all_columns())
            w.append(f"--\n-- Name: {n}; Type: TABLE; Schema: public; Owner: app\n--\n\n"
                     f"CREATE TABLE public.{n} (\n{cols}\n);\n\n\n"
                     f"ALTER TABLE public.{n} OWNER TO app;\n\n")
            if t.seq:
                s = f"{n}_id_seq"
                w.append(f"--\n-- Name: {s}; Type: SEQUENCE; Schema: public; Owner: app\n--\n\n"
                         f"CREATE SEQUENCE public.{s}\n    START WITH 1\n    INCREMENT BY 1\n"
                         f"    NO MINVALUE\n    NO MAXVALUE\n    CACHE 1;\n\n\n"
                         f"ALTER TABLE public.{s} OWNER TO app;\n\n"
                         f"--\n-- Name: {s}; Type: SEQUENCE OWNED BY; Schema: public; Owner: app\n--\n\n"
                         f"ALTER SEQUENCE public.{s} OWNED BY public.{n}.id;\n\n\n")
        for n in names:
            if T[n].seq:
                w.append(f"--\n-- Name: {n} id; Type: DEFAULT; Schema: public; Owner: app\n--\n\n"
                         f"ALTER TABLE ONLY public.{n} ALTER COLUMN id SET DEFAULT "
                         f"nextval('public.{n}_id_seq'::regclass);\n\n\n")
        with open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
            f.write("".join(w))
            for n in names:
                t = T[n]
                colnames = ", ".join(c for c, _ in t.all_columns())
                f.write(f"--\n-- Data for Name: {n}; Type: TABLE DATA; Schema: public; Owner: app\n--\n\n"
                        f"COPY public.{n} ({colnames}) FROM stdin;\n")
                rows = t.rows
                step = 200_000
                for i in range(0, len(rows), step):
                    f.write("\n".join(rows[i:i + step]))
                    f.write("\n")
                f.write("\\.\n\n\n")
            w = []
            for n in names:
                if T[n].seq:
                    w.append(f"--\n-- Name: {n}_id_seq; Type: SEQUENCE SET; Schema: public; Owner: app\n--\n\n"
                             f"SELECT pg_catalog.setval('public.{n}_id_seq', {T[n].next_id - 1}, true);\n\n\n")
            for n in names:
                w.append(f"--\n-- Name: {n} {n}_pkey; Type: CONSTRAINT; Schema: public; Owner: app\n--\n\n"
                         f"ALTER TABLE ONLY public.{n}\n    ADD CONSTRAINT {n}_pkey PRIMARY KEY ({T[n].pk});\n\n\n")
            for n in names:
                for ix, cols, uniq in sorted(T[n].indexes):
                    w.append(f"--\n-- Name: {ix}; Type: INDEX; Schema: public; Owner: app\n--\n\n"
                             f"CREATE {'UNIQUE ' if uniq else ''}INDEX {ix} ON public.{n} USING btree ({cols});\n\n\n")
            for n in names:
                for fk, col, ref in T[n].fks:
                    w.append(f"--\n-- Name: {n} {fk}; Type: FK CONSTRAINT; Schema: public; Owner: app\n--\n\n"
                             f"ALTER TABLE ONLY public.{n}\n    ADD CONSTRAINT {fk} FOREIGN KEY ({col}) "
                             f"REFERENCES public.{ref};\n\n\n")
            w.append("--\n-- PostgreSQL database dump complete\n--\n\n")
            f.write("".join(w))


def cmd_nightly(a):
    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    db = ShopDB(a.seed, a.size_mb, a.nights, a.churn)
    db.populate()
    t_pop = time.time() - t_start
    log(f"populated initial database in {t_pop:.1f}s "
        f"({', '.join(f'{n}={len(t.rows)}' for n, t in sorted(db.T.items()))})")
    total = 0
    for night in range(1, a.nights + 1):
        if night > 1:
            db.advance_day(night, log)
        p = os.path.join(a.out, f"night-{night:02d}.sql")
        db.write_dump(p)
        sz = os.path.getsize(p)
        total += sz
        log(f"wrote {p} ({sz / MB:.1f} MB)")
    el = time.time() - t_start
    log(f"nightly: {a.nights} dumps, {total / MB:.1f} MB in {el:.1f}s = {total / MB / el:.1f} MB/s")


# --------------------------------------------------------------------------
# tree: mixed file tree
# --------------------------------------------------------------------------

TEXT_EXT = {".txt", ".md", ".conf", ".yaml", ".yml", ".ini", ".json", ".csv", ".py", ".rs",
            ".c", ".h", ".js", ".go", ".toml", ".log", ".html", ".sql", ".sh"}


class TextGen:
    """Fast text generators: map random bytes onto token tables."""

    def __init__(self, rng):
        self.rng = rng
        r = rng.random
        # prose: 256-entry table with Zipf-ish repetition of common words
        common = ["the ", "of ", "and ", "to ", "a ", "in ", "is ", "for ", "that ", "with ",
                  "on ", "as ", "this ", "be ", "are ", "by "]
        table = []
        for i, wd in enumerate(common):
            table += [wd] * (6 if i < 6 else 3)
        extra = WORDS + [x.lower() for x in NOUN + ADJ + CITIES[:10]]
        while len(table) < 256 - 24:
            wd = extra[int(r() * len(extra))]
            table.append(wd + ("" if r() < 0.92 else ",") + " ")
        table += ["data.\n", "backup.\n", "system.\n", "again.\n", "later.\n", "it.\n",
                  "them.\n\n", "today.\n", "now.\n", "users.\n", "files.\n", "work.\n"] * 2
        self.prose = [w.encode() for w in table[:256]]
        # code: 65536 distinct lines
        idents = [a + b for a in ("get", "set", "load", "parse", "read", "write", "make", "find",
                                  "check", "build", "open", "close", "send", "recv", "init", "free")
                  for b in ("Config", "Buffer", "Chunk", "Index", "Node", "Value", "Header",
                            "Entry", "Block", "Packet", "Stream", "State", "Table", "Key", "Path", "Item")]
        vars_ = ["i", "j", "n", "len", "buf", "ctx", "res", "err", "data", "item", "node", "key",
                 "value", "count", "offset", "size", "out", "tmp", "path", "state"]
        tmpl = [
            "    let {v} = {f}(&{w}, {n})?;\n", "    if {v} > {n} {{\n", "        return Err(Error::{F});\n",
            "    }}\n", "    for {v} in 0..{w}.len() {{\n", "        {w}[{v}] = {f}({v}, {n});\n",
            "    // {f}: handle the {w} case ({n})\n", "fn {f}({v}: &mut {F}, {w}: usize) -> Result<{F}> {{\n",
            "}}\n", "\n", "    {v} += {w} * {n};\n", "        self.{v}.push({w}.clone());\n",
            "def {f}({v}, {w}={n}):\n", "    return {f}({v}) + {n}\n", "    {v} = self.{w}.get('{f}', {n})\n",
            "    if ({v} == NULL || {w} < {n}) {{\n", "        {v}->{w} = {f}({n});\n",
            "#include \"{f}.h\"\n", "    assert_eq!({f}({v}), {n});\n", "    log::debug!(\"{f} {{}}\", {v});\n",
        ]
        lines = []
        for k in range(65536):
            t = tmpl[int(r() * len(tmpl))]
            f = idents[int(r() * len(idents))]
            lines.append(t.format(v=vars_[int(r() * len(vars_))], w=vars_[int(r() * len(vars_))],
                                  f=f, F=f[0].upper() + f[1:], n=int(r() * r() * 4096)).encode())
        self.code = lines
        # log messages: 65536 distinct message bodies
        lvls = ["INFO"] * 12 + ["DEBUG"] * 6 + ["WARN"] * 2 + ["ERROR"]
        msgs = ["request completed method=GET path=/api/v2/orders/{n} status=200 duration_ms={m}",
                "request completed method=POST path=/api/v2/cart status=201 duration_ms={m}",
                "cache miss key=product:{n} backend=redis latency_us={m}",
                "db query ok table=orders rows={m} elapsed_ms={k}",
                "worker-{k} picked job id={n} queue=emails attempt=1",
                "payment authorized order={n} amount={m}.{k} currency=EUR provider=stripe",
                "slow query detected elapsed_ms={m} sql=\"SELECT * FROM events WHERE account_id = {n}\"",
                "connection reset by peer remote=10.0.{k}.{m} retry_in_ms=250",
                "user login ok account={n} mfa=true ip=203.0.113.{k}",
                "scheduled task backup-verify finished in {m}s checked={n} errors=0",
                "GC pause young={k}ms old={m}ms heap_after={n}K",
                "upstream timeout service=inventory after {m}ms request_id={h}"]
        self.logmsg = []
        for k in range(65536):
            lv = lvls[int(r() * len(lvls))]
            th = f"[{['http', 'worker', 'sched', 'db-pool'][int(r() * 4)]}-{int(r() * 16)}]"
            m = msgs[int(r() * len(msgs))].format(n=int(r() * 1e6), m=int(r() * r() * 2000),
                                                   k=int(r() * 256), h=f"{rng.getrandbits(64):016x}")
            self.logmsg.append(f" {lv:5s} {th} {m}\n")
        self.days = make_day_strings(4000)

    def prose_bytes(self, n):
        out = b"".join(map(self.prose.__getitem__, self.rng.randbytes(max(n // 4, 16))))
        return out[:n] if len(out) > n else out

    def code_bytes(self, n):
        k = max(n // 24, 4)
        idx = memoryview(self.rng.randbytes(2 * k)).cast("H")
        out = b"".join(map(self.code.__getitem__, idx))
        while len(out) < n:
            out += self.code_bytes(n - len(out))
        return out[:n]

    def config_bytes(self, n):
        r = self.rng.random
        parts, size, sec = [], 0, 0
        keys = ["listen", "port", "timeout", "max_connections", "log_level", "path", "user",
                "retries", "buffer_size", "enabled", "endpoint", "workers", "cache_ttl", "host"]
        while size < n:
            if r() < 0.12:
                s = f"\n[{WORDS[int(r() * len(WORDS))]}_{sec}]\n"
                sec += 1
            else:
                k = keys[int(r() * len(keys))]
                v = (str(int(r() * 65535)) if r() < 0.5 else
                     f"/srv/{WORDS[int(r() * len(WORDS))]}/{int(r() * 1e6):x}")
                s = f"{k}_{int(r() * 40)} = {v}\n"
            parts.append(s)
            size += len(s)
        return "".join(parts).encode()[:n]

    def log_bytes(self, n, t_start):
        """Log lines starting at time t_start (seconds); returns (bytes, t_end)."""
        r = self.rng.random
        msg = self.logmsg
        idx = memoryview(self.rng.randbytes(2 * (n // 90 + 16))).cast("H")
        days, hms = self.days, HMS
        out = []
        size = 0
        t = t_start
        for j in idx:
            t += r() * 0.9
            d = int(t // 86400)
            s = t - d * 86400
            line = f"{days[d]}T{hms[int(s)]}.{int((s % 1) * 1000):03d}Z{msg[j]}"
            out.append(line)
            size += len(line)
            if size >= n:
                break
        data = "".join(out).encode()
        if len(data) < n:
            more, t = self.log_bytes(n - len(data), t)
            data += more
        return data, t


def write_random_file(rng, path, size, header=b""):
    with open(path, "wb") as f:
        f.write(header)
        left = size - len(header)
        while left > 0:
            k = min(left, 4 << 20)
            f.write(rng.randbytes(k))
            left -= k


def cmd_tree(a):
    t_start = time.time()
    rng = random.Random(a.seed * 7919 + 17)
    tg = TextGen(rng)
    r = rng.random
    root = a.out
    if os.path.exists(root) and os.listdir(root):
        sys.exit(f"tree: {root} exists and is not empty")
    os.makedirs(root, exist_ok=True)
    total = a.size_mb * MB
    budget = {"logs": 0.33 * total, "bin": 0.42 * total, "small": 0.08 * total,
              "src": 0.10 * total, "dup": 0.07 * total}
    written = {k: 0 for k in budget}
    nfiles = {k: 0 for k in budget}

    def put(kind, path, data):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        written[kind] += len(data)
        nfiles[kind] += 1

    # source-like projects
    langs = [(".rs", "src"), (".py", "lib"), (".c", "src"), (".js", "app"), (".go", "pkg")]
    proj = 0
    src_dirs = []
    while written["src"] < budget["src"]:
        ext, top = langs[proj % len(langs)]
        pdir = os.path.join(root, "projects", f"project-{proj:02d}")
        put("src", os.path.join(pdir, "README.md"), tg.prose_bytes(2000 + int(r() * 8000)))
        put("src", os.path.join(pdir, "config", "settings.toml"), tg.config_bytes(500 + int(r() * 3000)))
        nmod = 40 + int(r() * 200)
        for m in range(nmod):
            depth = 1 + int(r() * 3)
            sub = [f"{WORDS[int(r() * len(WORDS))]}{int(r() * 5)}" for _ in range(depth)]
            d = os.path.join(pdir, top, *sub)
            fname = f"{WORDS[int(r() * len(WORDS))]}_{NOUN[int(r() * len(NOUN))].lower()}_{m}{ext}"
            size = int(1500 + r() * r() * 60000)
            put("src", os.path.join(d, fname), tg.code_bytes(size))
            if written["src"] >= budget["src"]:
                break
        src_dirs.append(pdir)
        proj += 1

    # small text / config files
    k = 0
    while written["small"] < budget["small"]:
        kind = int(r() * 4)
        size = int(1000 + r() * r() * 50000)
        if kind == 0:
            p = os.path.join(root, "etc", f"service{k % 37}", f"{WORDS[k % len(WORDS)]}-{k}.conf")
            data = tg.config_bytes(size)
        elif kind == 1:
            p = os.path.join(root, "home", f"user{k % 5}", "Documents", f"{2019 + k % 6}",
                             f"notes-{k}.md")
            data = tg.prose_bytes(size)
        elif kind == 2:
            p = os.path.join(root, "home", f"user{k % 5}", "data", f"export-{k}.csv")
            rows = [f"{i},{int(r() * 1e6)},{WORDS[int(r() * len(WORDS))]},{r() * 1000:.3f}\n"
                    for i in range(size // 28)]
            data = ("id,amount,label,score\n" + "".join(rows)).encode()
        else:
            p = os.path.join(root, "srv", "www", f"site{k % 11}", f"page-{k}.html")
            data = b"<html><body>\n" + tg.prose_bytes(size) + b"\n</body></html>\n"
        put("small", p, data)
        k += 1

    # medium binaries (incompressible)
    bins = []
    k = 0
    while written["bin"] < budget["bin"]:
        size = int((1 + r() * 19) * MB)
        size = min(size, max(int(budget["bin"] - written["bin"]), 64 * 1024))
        if k % 3 == 0:
            p = os.path.join(root, "media", "photos", f"{2018 + k % 7}", f"IMG_{1000 + k}.jpg")
            hdr = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01"
        elif k % 3 == 1:
            p = os.path.join(root, "data", "blobs", f"{k % 16:02x}", f"blob-{k:05d}.bin")
            hdr = b""
        else:
            p = os.path.join(root, "archives", f"release-{k}.tar.zst")
            hdr = b"\x28\xb5\x2f\xfd"
        os.makedirs(os.path.dirname(p), exist_ok=True)
        write_random_file(rng, p, size, hdr)
        written["bin"] += size
        nfiles["bin"] += 1
        bins.append(p)
        k += 1

    # large compressible logs
    k = 0
    t_log = 1000 * 86400.0
    apps = ["api", "worker", "nginx-access", "postgres", "scheduler", "auth"]
    while written["logs"] < budget["logs"]:
        left = budget["logs"] - written["logs"]
        size = int((50 + r() * 250) * MB)
        size = int(min(size, left)) if left > 20 * MB or k == 0 else int(left)
        p = os.path.join(root, "var", "log", apps[k % len(apps)], f"{apps[k % len(apps)]}.log")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            left_f = size
            t = t_log
            while left_f > 0:
                data, t = tg.log_bytes(min(left_f, 8 * MB), t)
                f.write(data)
                left_f -= len(data)
        written["logs"] += size
        nfiles["logs"] += 1
        k += 1

    # duplicates: copies of binaries and of a project directory
    k = 0
    order = sorted(bins)
    rng.shuffle(order)
    for src in order:
        if written["dup"] >= budget["dup"]:
            break
        sz = os.path.getsize(src)
        if written["dup"] + sz > budget["dup"] * 1.2:
            continue
        dst = os.path.join(root, "backup", "old-media", f"copy-{k}-{os.path.basename(src)}")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
        written["dup"] += sz
        nfiles["dup"] += 1
        k += 1
    if src_dirs:
        srcp = src_dirs[0]
        dst = os.path.join(root, "backup", "projects-snapshot", os.path.basename(srcp))
        shutil.copytree(srcp, dst)
        for dp, _, fs in os.walk(dst):
            for fn in fs:
                written["dup"] += os.path.getsize(os.path.join(dp, fn))
                nfiles["dup"] += 1

    el = time.time() - t_start
    tot = sum(written.values())
    log("tree: " + ", ".join(f"{k}={written[k] / MB:.0f}MB/{nfiles[k]} files" for k in written))
    log(f"tree: {sum(nfiles.values())} files, {tot / MB:.1f} MB in {el:.1f}s = {tot / MB / el:.1f} MB/s")


# --------------------------------------------------------------------------
# mutate: a day of work on a tree
# --------------------------------------------------------------------------

def list_files(root):
    out = []
    for dp, dns, fns in os.walk(root):
        dns.sort()
        for fn in sorted(fns):
            out.append(os.path.relpath(os.path.join(dp, fn), root))
    out.sort()
    return out


def cmd_mutate(a):
    t_start = time.time()
    rng = random.Random(a.seed * 104729 + 3)
    r = rng.random
    tg = TextGen(rng)
    root = a.tree
    files = list_files(root)
    if not files:
        sys.exit(f"mutate: no files under {root}")
    logs = [f for f in files if f.endswith(".log")]
    others = [f for f in files if not f.endswith(".log")]
    changed = 0
    # 1. every log grows by 0.5-3 %
    for f in logs:
        p = os.path.join(root, f)
        sz = os.path.getsize(p)
        n = max(int(sz * (0.005 + r() * 0.025)), 4096)
        data, _ = tg.log_bytes(n, 1001 * 86400.0 + a.seed * 86400.0)
        with open(p, "ab") as fh:
            fh.write(data)
        changed += len(data)
    # 2. modify ~fraction of the other files in the middle
    n_mod = max(int(len(others) * a.fraction), 1)
    picks = sorted(rng.sample(range(len(others)), min(n_mod, len(others))))
    for i in picks:
        p = os.path.join(root, others[i])
        ext = os.path.splitext(p)[1]
        with open(p, "rb") as fh:
            data = fh.read()
        if not data:
            continue
        if ext in TEXT_EXT:
            # replace a few lines around a random point in the middle third
            pos = len(data) // 3 + int(r() * len(data) / 3)
            start = data.rfind(b"\n", 0, pos) + 1
            end = start
            for _ in range(1 + int(r() * 6)):
                nx = data.find(b"\n", end)
                end = len(data) if nx < 0 else nx + 1
            ins = (tg.code_bytes if ext in (".rs", ".py", ".c", ".js", ".go", ".h")
                   else tg.prose_bytes)(int(50 + r() * 600))
            if not ins.endswith(b"\n"):
                ins += b"\n"
            new = data[:start] + ins + data[end:]
            with open(p, "wb") as fh:
                fh.write(new)
            changed += len(ins)
        else:
            # binary: overwrite a region in place, or insert bytes (shifts the tail)
            pos = int(len(data) * (0.2 + r() * 0.6))
            n = min(int(4096 + r() * 256 * 1024), max(len(data) - pos, 1))
            patch = rng.randbytes(n)
            if r() < 0.7:
                with open(p, "r+b") as fh:
                    fh.seek(pos)
                    fh.write(patch)
            else:
                with open(p, "wb") as fh:
                    fh.write(data[:pos] + patch + data[pos:])
            changed += n
    # 3. delete a few files
    n_del = max(int(len(others) * 0.002), 1)
    modset = set(picks)
    cand = [i for i in range(len(others)) if i not in modset]
    dels = sorted(rng.sample(cand, min(n_del, len(cand)))) if cand else []
    for i in dels:
        os.remove(os.path.join(root, others[i]))
    # 4. add a few files next to existing ones
    n_add = max(int(len(others) * 0.003), 2)
    added = 0
    for k in range(n_add):
        base = others[int(r() * len(others))]
        d = os.path.join(root, os.path.dirname(base))
        os.makedirs(d, exist_ok=True)
        ext = os.path.splitext(base)[1] or ".txt"
        p = os.path.join(d, f"new-s{a.seed}-{k}{ext}")
        if ext in (".rs", ".py", ".c", ".js", ".go"):
            data = tg.code_bytes(int(2000 + r() * 30000))
        elif ext in TEXT_EXT:
            data = tg.prose_bytes(int(1000 + r() * 20000))
        else:
            data = rng.randbytes(int(64 * 1024 + r() * 2 * MB))
        with open(p, "wb") as fh:
            fh.write(data)
        added += len(data)
    el = time.time() - t_start
    log(f"mutate: appended to {len(logs)} logs, modified {len(picks)} files, deleted {len(dels)}, "
        f"added {n_add} ({added / MB:.1f} MB new files, {changed / MB:.1f} MB changed) in {el:.1f}s")


# --------------------------------------------------------------------------

def log(msg):
    print(msg, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("nightly", help="write N nightly pg_dump-like SQL dumps")
    p.add_argument("--out", required=True)
    p.add_argument("--nights", type=int, default=7)
    p.add_argument("--size-mb", type=float, default=200)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--churn", type=float, default=1.0,
                   help="multiplier for the nightly update/delete rates (0 = append-only)")
    p = sub.add_parser("tree", help="write a mixed file tree")
    p.add_argument("--out", required=True)
    p.add_argument("--size-mb", type=float, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("mutate", help="change a tree like a day of work")
    p.add_argument("--tree", required=True)
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--fraction", type=float, default=0.02, help="fraction of files to modify")
    a = ap.parse_args()
    {"nightly": cmd_nightly, "tree": cmd_tree, "mutate": cmd_mutate}[a.mode](a)


if __name__ == "__main__":
    main()
