"""The transaction contract, its validation, and a PaySim-spirit synthetic generator.

Everything here is synthetic: no real fraud data set installs offline (see ../shared/NOTES.md), so the
generator models the phenomena the scorer must handle: customer/merchant profiles with a home country and
spending level, daily and weekly seasonality, log-normal amounts, rare fraud (0.1-0.5 %) arriving as
*episodes* of named typologies, label delay, and drift over time. It is vectorised with numpy so millions
of transactions take seconds.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# -- the contract -------------------------------------------------------------------------------------

TX_TYPES = ("PAYMENT", "TRANSFER", "CASH_OUT", "CASH_IN", "DEBIT")
CHANNELS = ("card", "online", "mobile", "atm", "branch")
COUNTRIES = ("GB", "DE", "FR", "ES", "IT", "NL", "US", "CN", "JP", "BR", "NG", "RU", "IN", "AE", "SG")
CURRENCY_OF = {"GB": "GBP", "DE": "EUR", "FR": "EUR", "ES": "EUR", "IT": "EUR", "NL": "EUR", "US": "USD",
               "CN": "CNY", "JP": "JPY", "BR": "BRL", "NG": "NGN", "RU": "RUB", "IN": "INR", "AE": "AED",
               "SG": "SGD"}
MCCS = ("5411", "5812", "5999", "4111", "5541", "5732", "7995", "6011", "4829", "5311", "5912", "7011")
TYPOLOGIES = ("account_takeover", "card_testing", "compromised_device", "money_mule", "geo_jump")

REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "tx_id": str, "ts": (int, float), "account": str, "counterparty": str, "amount": (int, float),
    "currency": str, "type": str, "channel": str, "country": str, "device": str, "mcc": str,
}
#: Guard against abusive payloads (a 10 MB "account" would otherwise live in scorer state forever).
MAX_STRING_LEN = 128
MAX_AMOUNT = 1e10


class ContractError(ValueError):
    """A transaction breaks the contract; the message names the field."""


def validate_transaction(tx: Any) -> dict[str, Any]:
    """Return ``tx`` if it honours the contract, else raise ``ContractError`` naming the field."""
    if not isinstance(tx, dict):
        raise ContractError(f"expected a JSON object, got {type(tx).__name__}")
    for name, kinds in REQUIRED_FIELDS.items():
        if name not in tx:
            raise ContractError(f"missing field '{name}'")
        value = tx[name]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ContractError(f"field '{name}' has type {type(value).__name__}")
        if isinstance(value, str) and not (0 < len(value) <= MAX_STRING_LEN):
            raise ContractError(f"field '{name}' has length {len(value)} (1..{MAX_STRING_LEN} allowed)")
    amount = float(tx["amount"])
    if not (0 < amount <= MAX_AMOUNT) or math.isnan(amount):
        raise ContractError(f"field 'amount' must be > 0 and <= {MAX_AMOUNT:g}, got {tx['amount']!r}")
    if not math.isfinite(float(tx["ts"])) or tx["ts"] < 0:
        raise ContractError(f"field 'ts' must be epoch seconds, got {tx['ts']!r}")
    if tx["type"] not in TX_TYPES:
        raise ContractError(f"field 'type' must be one of {', '.join(TX_TYPES)}, got {tx['type']!r}")
    if tx["channel"] not in CHANNELS:
        raise ContractError(f"field 'channel' must be one of {', '.join(CHANNELS)}, got {tx['channel']!r}")
    if len(tx["currency"]) != 3 or not tx["currency"].isalpha() or not tx["currency"].isupper():
        raise ContractError(f"field 'currency' must be an ISO 4217 code, got {tx['currency']!r}")
    if len(tx["country"]) != 2 or not tx["country"].isalpha() or not tx["country"].isupper():
        raise ContractError(f"field 'country' must be ISO 3166 alpha-2, got {tx['country']!r}")
    if len(tx["mcc"]) != 4 or not tx["mcc"].isdigit():
        raise ContractError(f"field 'mcc' must be a 4-digit string, got {tx['mcc']!r}")
    if "is_fraud" in tx and tx["is_fraud"] not in (0, 1):
        raise ContractError(f"field 'is_fraud' must be 0 or 1, got {tx['is_fraud']!r}")
    return tx


def parse_transaction(raw: bytes | str) -> dict[str, Any]:
    """Decode one Kafka message / JSONL line and validate it (``ContractError`` on any problem)."""
    try:
        tx = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ContractError(f"not valid JSON ({str(exc)[:80]})") from None
    return validate_transaction(tx)


# -- the generator ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the synthetic world. Different seeds / drift give the 'real' and held-out streams."""

    n: int = 100_000
    seed: int = 0
    start_ts: float = 1_767_225_600.0      # 2026-01-01 UTC
    tx_per_account: float = 40.0            # average over the whole span: sets the population size
    span_days: float = 30.0
    fraud_rate: float = 0.003               # share of transactions belonging to fraud episodes
    drift: float = 0.0                      # 0 = stationary; 1 = amounts +50 % and fraud mix shifted by the end
    label_delay_days: float = 3.0           # mean delay before a label is known (exponential)


# Base mix of legitimate transaction types and their log-amount offsets.
_TYPE_P = np.array([0.55, 0.12, 0.10, 0.08, 0.15])
_TYPE_LOG_OFFSET = np.array([0.0, 1.2, 0.9, 1.0, -0.3])
_CHANNEL_FOR_TYPE = {  # plausible channels for each type (legit traffic)
    0: (0, 1, 2), 1: (1, 2, 4), 2: (3, 4), 3: (3, 4), 4: (0, 1, 2),
}
_HOUR_WEIGHTS = np.array([1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 3.5, 3.5, 4, 5, 4.5, 4, 4, 4.5, 5, 5.5,
                          5, 4, 3.5, 2.5, 1.5], dtype=float)
_WEEKDAY_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.05, 1.2, 1.35, 0.9])
_TYPOLOGY_P = np.array([0.25, 0.25, 0.2, 0.15, 0.15])
_TYPOLOGY_P_DRIFTED = np.array([0.15, 0.2, 0.25, 0.25, 0.15])  # mules and terminal compromise grow


def _seasonal_times(rng: np.random.Generator, size: int, cfg: GeneratorConfig) -> np.ndarray:
    """Timestamps with a daily and weekly rhythm (sampled day x hour, uniform within the hour)."""
    n_days = max(1, math.ceil(cfg.span_days))
    day_w = _WEEKDAY_WEIGHTS[(np.arange(n_days) + 3) % 7]  # 2026-01-01 is a Thursday
    joint = np.outer(day_w, _HOUR_WEIGHTS).ravel()
    cell = rng.choice(joint.size, size=size, p=joint / joint.sum())
    return cfg.start_ts + cell * 3600.0 + rng.uniform(0, 3600.0, size)


class _Population:
    """Accounts (home country, spending level, device, activity) and merchants (country, mcc)."""

    def __init__(self, rng: np.random.Generator, cfg: GeneratorConfig):
        self.n_accounts = max(50, int(cfg.n / cfg.tx_per_account))
        self.n_merchants = max(20, self.n_accounts // 10)
        home_p = np.array([0.3, 0.15, 0.12, 0.08, 0.07, 0.05, 0.08, 0.04, 0.03, 0.02, 0.01, 0.01,
                           0.02, 0.01, 0.01])
        self.home = rng.choice(len(COUNTRIES), self.n_accounts, p=home_p / home_p.sum())
        self.level = rng.normal(3.3, 0.7, self.n_accounts)          # log of a typical payment
        self.activity = rng.pareto(1.5, self.n_accounts) + 1.0       # few busy, many quiet accounts
        self.activity /= self.activity.sum()
        self.merchant_country = np.where(rng.random(self.n_merchants) < 0.85,
                                         rng.choice(len(COUNTRIES), self.n_merchants, p=home_p / home_p.sum()),
                                         rng.integers(0, len(COUNTRIES), self.n_merchants))
        self.merchant_mcc = rng.choice(len(MCCS) - 3, self.n_merchants)  # leave gambling/cash/wire rarer


def generate(cfg: GeneratorConfig) -> list[dict[str, Any]]:
    """Labelled synthetic transactions, sorted by ``ts``. Each carries ``is_fraud``, ``typology``
    (empty for legit) and ``label_ts`` (when the label becomes known)."""
    return columns_to_records(generate_columns(cfg))


def generate_columns(cfg: GeneratorConfig) -> dict[str, np.ndarray]:
    """Column-oriented generation (what ``generate`` wraps); fast enough for millions of rows."""
    rng = np.random.default_rng(cfg.seed)
    pop = _Population(rng, cfg)
    n_fraud_target = round(cfg.n * cfg.fraud_rate)
    fraud = _fraud_episodes(rng, pop, cfg, n_fraud_target)
    n_legit = max(0, cfg.n - len(fraud["ts"]))
    legit = _legit(rng, pop, cfg, n_legit)
    cols = {k: np.concatenate([legit[k], fraud[k]]) for k in legit}
    order = np.argsort(cols["ts"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    prefix = f"s{cfg.seed}-"
    cols["tx_id"] = np.char.add(prefix, np.arange(len(order)).astype(str))
    delay = rng.exponential(cfg.label_delay_days * 86400.0, len(order))
    cols["label_ts"] = np.round(cols["ts"] + delay, 3)
    return cols


def _drift_at(ts: np.ndarray, cfg: GeneratorConfig) -> np.ndarray:
    """0 at the start of the span, ``cfg.drift`` at its end."""
    return cfg.drift * np.clip((ts - cfg.start_ts) / (cfg.span_days * 86400.0), 0, 1)


def _legit(rng, pop: _Population, cfg: GeneratorConfig, n: int) -> dict[str, np.ndarray]:
    ts = _seasonal_times(rng, n, cfg)
    acct = rng.choice(pop.n_accounts, n, p=pop.activity)
    ttype = rng.choice(len(TX_TYPES), n, p=_TYPE_P)
    log_amt = pop.level[acct] + _TYPE_LOG_OFFSET[ttype] + rng.normal(0, 0.8, n)
    amount = np.exp(log_amt) * (1 + 0.5 * _drift_at(ts, cfg))
    channel = np.empty(n, dtype=np.int64)
    for t, allowed in _CHANNEL_FOR_TYPE.items():
        sel = ttype == t
        channel[sel] = rng.choice(allowed, sel.sum())
    merchant = rng.integers(0, pop.n_merchants, n)
    drift = _drift_at(ts, cfg)
    # Drift: customers travel more and use second devices more often (more innocent 'anomalies').
    travelling = rng.random(n) < 0.02 + 0.08 * drift
    country = np.where(travelling, rng.integers(0, len(COUNTRIES), n), pop.home[acct])
    # Most customers use one device; some have a second (phone + laptop).
    device_slot = (rng.random(n) < 0.15 + 0.25 * drift).astype(np.int64)
    device = np.char.add(np.char.add("D", acct.astype(str)), np.where(device_slot == 1, "b", "a"))
    is_card_like = np.isin(ttype, (0, 4))
    counterparty = np.where(is_card_like, np.char.add("M", merchant.astype(str)),
                            np.where(ttype == 1, np.char.add("C", rng.integers(0, pop.n_accounts, n).astype(str)),
                                     np.char.add("ATM", rng.integers(0, 500, n).astype(str))))
    mcc = np.where(is_card_like, np.asarray(MCCS)[pop.merchant_mcc[merchant]],
                   np.where(ttype == 1, "4829", "6011"))
    return _pack(ts, np.char.add("C", acct.astype(str)), counterparty, amount, country, ttype, channel,
                 device, mcc, np.zeros(n, np.int8), np.full(n, "", dtype="<U20"))


def _pack(ts, account, counterparty, amount, country, ttype, channel, device, mcc, is_fraud, typology):
    country_codes = np.asarray(COUNTRIES)[country]
    currency = np.asarray([CURRENCY_OF[c] for c in COUNTRIES])[country]
    return {
        "ts": np.round(np.asarray(ts, dtype=float), 3), "account": np.asarray(account).astype(str),
        "counterparty": np.asarray(counterparty).astype(str), "amount": np.round(np.maximum(amount, 0.01), 2),
        "currency": currency, "type": np.asarray(TX_TYPES)[ttype], "channel": np.asarray(CHANNELS)[channel],
        "country": country_codes, "device": np.asarray(device).astype(str), "mcc": np.asarray(mcc).astype(str),
        "is_fraud": np.asarray(is_fraud, dtype=np.int8), "typology": np.asarray(typology).astype("<U20"),
    }


def _fraud_episodes(rng, pop: _Population, cfg: GeneratorConfig, n_target: int) -> dict[str, np.ndarray]:
    """Fraud arrives in episodes; keep drawing episodes until the target count is reached."""
    rows: dict[str, list] = {k: [] for k in ("ts", "account", "counterparty", "amount", "country", "type",
                                             "channel", "device", "mcc", "typology")}
    made, episode = 0, 0
    # Episodes are few (thousands for millions of rows), so a loop over episodes is cheap; the rows
    # inside each episode are built with numpy.
    while made < n_target:
        t0 = float(_seasonal_times(rng, 1, cfg)[0])
        d = float(_drift_at(np.array([t0]), cfg)[0])
        p = (1 - d) * _TYPOLOGY_P + d * _TYPOLOGY_P_DRIFTED if cfg.drift else _TYPOLOGY_P
        kind = TYPOLOGIES[rng.choice(len(TYPOLOGIES), p=p / p.sum())]
        victim = int(rng.choice(pop.n_accounts, p=pop.activity))
        ep = _EPISODES[kind](rng, pop, victim, t0, episode, d)
        ep = ep[: max(1, n_target - made)]
        for r in ep:
            for k, v in zip(rows, (*r, kind)):
                rows[k].append(v)
        made += len(ep)
        episode += 1
    n = len(rows["ts"])
    return _pack(rows["ts"], rows["account"], rows["counterparty"], np.asarray(rows["amount"], float),
                 np.asarray(rows["country"], np.int64), np.asarray(rows["type"], np.int64),
                 np.asarray(rows["channel"], np.int64), rows["device"], rows["mcc"], np.ones(n, np.int8),
                 rows["typology"])


def _ato(rng, pop, victim, t0, ep, d):
    """Account takeover: a new device transfers most of the balance out, then a mule cashes out."""
    balance = math.exp(pop.level[victim] + 2.5 + rng.normal(0, 0.5))
    # Drift: fraudsters learn to hijack the victim's own session/device instead of a new one.
    dev = f"D{victim}a" if rng.random() < 0.6 * d else f"X{ep}"
    mule = f"C{int(rng.integers(pop.n_accounts, pop.n_accounts * 2))}"
    country = int(rng.integers(0, len(COUNTRIES)))
    t1 = t0 + rng.uniform(60, 900)
    out = [(t0, f"C{victim}", mule, balance * rng.uniform(0.6, 0.95), country, 1, 2, dev, "4829")]
    if rng.random() < 0.7:
        out.append((t1, f"C{victim}", f"ATM{int(rng.integers(0, 500))}", balance * rng.uniform(0.02, 0.05),
                    country, 2, 3, dev, "6011"))
    return out


def _card_testing(rng, pop, victim, t0, ep, d):
    """A burst of tiny online payments at many merchants from an unknown device within minutes."""
    k = int(rng.integers(4, 12))
    times = t0 + np.sort(rng.uniform(0, 300 * (1 + 3 * d), k))  # drift: slower bursts
    merchants = rng.integers(0, pop.n_merchants, k)
    dev, country = f"X{ep}", int(rng.integers(0, len(COUNTRIES)))
    return [(float(t), f"C{victim}", f"M{m}", float(rng.uniform(0.5, 4.0 + 30.0 * d)), country, 0, 1, dev, "5999")
            for t, m in zip(times, merchants)]


def _compromised_device(rng, pop, victim, t0, ep, d):
    """One terminal/device used by several different accounts within an hour, cashing out at an ATM."""
    k = int(rng.integers(3, 8))
    victims = rng.choice(pop.n_accounts, k, p=pop.activity)
    times = t0 + np.sort(rng.uniform(0, 3600, k))
    dev = f"T{ep}"
    return [(float(t), f"C{v}", f"ATM{ep % 500}", float(math.exp(pop.level[v] + 1.5 + rng.normal(0, 0.4))),
             int(pop.home[v]), 2, 3, dev, "6011") for t, v in zip(times, victims)]


def _money_mule(rng, pop, victim, t0, ep, d):
    """Fresh accounts pass a sum along a chain of transfers, each keeping a small cut, then cash out."""
    hops = int(rng.integers(2, 5))
    amount = math.exp(rng.normal(7.5, 0.6))
    chain = [f"C{int(x)}" for x in rng.integers(pop.n_accounts * 2, pop.n_accounts * 3, hops + 1)]
    country = int(pop.home[victim])
    out, t = [], t0
    for h in range(hops):
        out.append((t, chain[h], chain[h + 1], amount, country, 1, 2, f"Y{ep}-{h}", "4829"))
        amount *= rng.uniform(0.9, 0.98)
        t += rng.uniform(300, 3600 * (1 + 4 * d))  # drift: mules wait longer between hops
    out.append((t, chain[-1], f"ATM{int(rng.integers(0, 500))}", amount, country, 2, 3, f"Y{ep}-{hops}", "6011"))
    return out


def _geo_jump(rng, pop, victim, t0, ep, d):
    """A card used at home and then, impossibly soon, far away for large payments."""
    home = int(pop.home[victim])
    away = int((home + rng.integers(5, len(COUNTRIES) - 1)) % len(COUNTRIES))
    dev = f"D{victim}a"
    out = [(t0, f"C{victim}", f"M{int(rng.integers(0, pop.n_merchants))}",
            float(math.exp(pop.level[victim] + rng.normal(0, 0.5))), home, 0, 0, dev, "5411")]
    t = t0 + rng.uniform(600, 5400)
    for _ in range(int(rng.integers(1, 4))):
        out.append((t, f"C{victim}", f"M{int(rng.integers(0, pop.n_merchants))}",
                    float(math.exp(pop.level[victim] + 1.8 + rng.normal(0, 0.4))), away, 0, 0, f"X{ep}", "5732"))
        t += rng.uniform(60, 600)
    # The first (home) payment is the genuine customer; only the jumps are fraud.
    return out[1:] if len(out) > 1 else out


_EPISODES = {"account_takeover": _ato, "card_testing": _card_testing,
             "compromised_device": _compromised_device, "money_mule": _money_mule, "geo_jump": _geo_jump}


def columns_to_records(cols: dict[str, np.ndarray], labelled: bool = True) -> list[dict[str, Any]]:
    """Turn generator columns into contract dicts (``labelled=False`` drops the label fields)."""
    names = ["tx_id", "ts", "account", "counterparty", "amount", "currency", "type", "channel", "country",
             "device", "mcc"]
    if labelled:
        names += ["is_fraud", "typology", "label_ts"]
    lists = [cols[k].tolist() for k in names]
    return [dict(zip(names, row)) for row in zip(*lists)]


def write_jsonl_fast(path, cols: dict[str, np.ndarray], labelled: bool = True) -> int:
    """Write generator columns as JSONL atomically (temp file + rename)."""
    from shared.io import atomic_path

    records = columns_to_records(cols, labelled)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines("\n".join(dumps(r) for r in records[start:start + 50_000]) + "\n" for start in range(0, len(records), 50_000))
    return len(records)
