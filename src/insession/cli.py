"""The ``insession`` command. The only module that reads argv, prints, or configures logging."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from insession.catalog import Item
from insession.clock import DAY_MS, SystemClock
from insession.config import Settings, SurfaceConfig
from insession.datasets import FORMATS, DataMapping, LoadStats, load_items, read_events
from insession.engine import LOG_FILE, SNAPSHOT_FILE, Engine
from insession.errors import FieldError, InsessionError, ValidationError, describe
from insession.evaluation import EvalOptions, Split, report, time_split
from insession.evaluation import evaluate as evaluate_split
from insession.evaluation.baselines import BASELINES
from insession.evaluation.evaluate import ALL_VARIANTS
from insession.evaluation.protocol import time_ordered
from insession.events import Event
from insession.explain import Explainer
from insession.model import ModelBundle
from insession.pipeline import RecommendRequest, RecommendResponse
from insession.sequence.train import SequenceConfig, torch_missing
from insession.training import TrainConfig, default_workers
from insession.training import train as train_model

app = typer.Typer(add_completion=False, no_args_is_help=True, help="insession: real-time in-session recommendations.")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: No markup: what is printed carries ids, paths and install commands (``insession[torch]``) that
#: rich would otherwise read as style tags and drop.
console = Console(markup=False)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and os.environ.get("CI") == "true",
    )


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except InsessionError as exc:
        console.print(f"error: {exc.message}", style="red")
        raise typer.Exit(2) from None


# Help text is rich markup: a bracket is escaped so the install command prints whole.
SEQUENCE_HELP = "Also train the sequence model (needs the torch extra: pip install 'insession\\[torch]')."


FACTORS_HELP = (
    "Give the ranker the online factor model's score as a feature (off by default: it cost 6% NDCG@20 on the "
    "Taobao sample)."
)


def _train_config(
    sequence: bool, online_factors: bool = False, learn_online: bool = True, seed: int = 0
) -> TrainConfig:
    if sequence and (missing := torch_missing()) is not None:
        raise ValidationError([FieldError("sequence", "PyTorch installed (pip install 'insession[torch]')", missing)])
    if seed < 0:
        raise ValidationError([FieldError("seed", "an integer >= 0", describe(seed))])
    return TrainConfig(
        seed=seed,
        sequence=SequenceConfig(enabled=sequence, seed=seed),
        online_factors=online_factors,
        learn_online=learn_online,
    )


SEED_HELP = (
    "Seed of every random part of training (embeddings, ANN index, the ranker's negatives and trees, the "
    "sequence model): the same data and seed give the same model; other seeds show how much a re-fit moves."
)


def _say_sequence(model: ModelBundle) -> None:
    seq = model.stats.get("sequence", {})
    if "off" in seq:
        console.print(f"sequence model: off ({seq['off']})")
    else:
        console.print(
            f"sequence model: {seq['transitions']} transitions, {seq['loss']}, validation MRR@20 "
            f"{seq.get('val_MRR@20', '-')}, {seq['seconds']}s"
        )


def _settings(config: Path | None, **overrides: object) -> Settings:
    return Settings.load(dict(os.environ), config, **overrides)


def _configure_logging(level: str) -> None:
    """The library's loggers at ``level`` on stderr; the access log (one JSON line per HTTP
    request, logger ``insession.access``, at INFO) as bare JSON lines on stderr."""
    from insession.serving.access import ACCESS_LOGGER

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    access = logging.getLogger(ACCESS_LOGGER)
    access.handlers.clear()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False


def _version(show: bool) -> None:
    if show:
        from insession import __version__

        console.print(f"insession {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    log_level: Annotated[
        str,
        typer.Option(
            envvar="INSESSION_LOG_LEVEL",
            help=f"One of {', '.join(LOG_LEVELS)}. At info and below, serve writes one JSON access-log line per "
            "request to stderr.",
        ),
    ] = "info",
) -> None:
    """insession: real-time in-session recommendations."""
    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(
            f"expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}", param_hint="--log-level"
        )
    _configure_logging(log_level.lower())


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Event file (or a directory holding one).")],
    out: Annotated[Path, typer.Option(help="Model directory to write.")],
    format: Annotated[str, typer.Option(help=f"One of {', '.join(FORMATS)}.")] = "auto",
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
    sequence: Annotated[bool, typer.Option(help=SEQUENCE_HELP)] = False,
    online_factors: Annotated[bool, typer.Option(help=FACTORS_HELP)] = False,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    columns: ColumnsOption = None,
    event_types: EventTypesOption = None,
    properties: PropertiesOption = None,
    max_skipped: MaxSkippedOption = None,
    items: ItemsOption = None,
) -> None:
    """Train a model from an event file and write a versioned model directory."""
    with _errors():
        settings = _settings(config)
        mapping = _mapping(settings, columns, event_types, properties, max_skipped)
        started = time.perf_counter()
        with _progress() as progress:
            events, stats = _read(data, format, mapping, progress, "")
            catalog = _read_items(items) if items is not None else []
            stage = progress.add_task("training", total=100)
            model = train_model(
                events,
                _train_config(sequence, online_factors, settings.learn_online, seed),
                session_cfg=settings.session,
                items=catalog,
                progress=lambda name, f: progress.update(
                    stage, completed=int(f * 100), description=f"training: {name}"
                ),
            )
        model.save(out)
        console.print(f"read {stats.summary()}" + (f"; {len(catalog)} items from {items.name}" if items else ""))
        console.print(
            f"model {model.version} -> {out}  ({model.stats['items']} items, "
            f"{model.stats['sessions']} sessions, {model.stats['covisit_pairs']} "
            f"co-visitation pairs) in {time.perf_counter() - started:.1f}s"
        )
        _say_sequence(model)
        ranker = model.stats.get("ranker", {})
        if "skipped" in ranker:
            console.print(f"ranker: not trained ({ranker['skipped']}); the transparent scorer serves (tier 'fast')")
        else:
            console.print(
                f"ranker: LambdaRank on {ranker['groups']} replayed requests, candidate recall "
                f"{ranker['candidate_recall']:.1%}, validation NDCG@10 {ranker['valid_ndcg@10']} at round "
                f"{ranker['best_iteration']}; top features: {', '.join(ranker['top_features'][:5])}"
            )


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Model directory from `insession train`.")],
    store: Annotated[
        str,
        typer.Option(
            help="memory (embedded), redis://HOST:PORT or redis+cluster://HOST:PORT[,HOST:PORT...] "
            "(state and event streams in Redis or a Redis Cluster)."
        ),
    ] = "memory",
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the event log, snapshots and request manifests live.")
    ] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="On Redis: stream workers to run inside this server (0 when `insession worker` "
            "processes fold the streams)."
        ),
    ] = 1,
    bare_endpoint: Annotated[
        bool, typer.Option(help="Add POST /v1/bench/bare (a fixed list, no engine) for `insession bench`.")
    ] = False,
) -> None:
    """Serve the HTTP API with a trained model."""
    from insession.serving.app import create_app
    from insession.serving.server import serve_forever

    with _errors():
        settings = _settings(config, model_dir=model, store=store, data_dir=data_dir, host=host, port=port)
        engine = _open_engine(settings, None)
        where = f"log: {settings.data_dir / LOG_FILE}"
        if not engine.folds_inline:
            for _ in range(max(workers, 0)):
                engine.start_worker()
            where = f"state and events: {settings.store}, {max(workers, 0)} in-process workers"
        console.print(f"serving model {engine.model.version} on http://{settings.host}:{settings.port} ({where})")
        # SIGTERM (how containers stop a process) ends like SIGINT: uvicorn stops accepting, drains
        # the requests in flight, and returns; then the engine writes its snapshot and closes. (uvicorn
        # raises the signal again once it has stopped: these handlers make that a no-op, so the
        # process exits 0 instead of dying on the default SIGTERM action before the snapshot.)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        api = create_app(engine, bare_endpoint=bare_endpoint)
        try:
            serve_forever(api, settings.host, settings.port)
        finally:
            if getattr(api.state, "explainer", None) is not None:
                api.state.explainer.close()  # the explanation process closes its files first
            engine.close()
        console.print("stopped")


@app.command()
def worker(
    store: Annotated[
        str,
        typer.Option(help="The Redis the servers use: redis://HOST:PORT or redis+cluster://HOST:PORT[,HOST:PORT...]."),
    ],
    config: Annotated[Path | None, typer.Option(help="TOML settings file (session and partition settings).")] = None,
    name: Annotated[str | None, typer.Option(help="Consumer name (default: host-pid-random).")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Events folded per partition per transaction.")] = 200,
    lease_ms: Annotated[
        int, typer.Option(min=100, help="A partition lease lapses this long after its worker stops renewing it.")
    ] = 5000,
) -> None:
    """Fold the Redis event streams into the Redis feature store until stopped (SIGINT/SIGTERM).

    Run as many as you like: partitions are shared among the live workers, and a dead worker's
    partitions (with what it had read but not applied) are taken over when its leases lapse.
    """
    import signal
    import threading

    from insession.redis_backend import connect
    from insession.worker import StreamWorker

    with _errors():
        settings = _settings(config, store=store)
        if settings.store == "memory":
            expected = "a redis://HOST:PORT or redis+cluster://HOST:PORT[,HOST:PORT...] URL"
            raise ValidationError([FieldError("store", expected, settings.store)])
        client = connect(settings.store, 5000.0, retries=1)
        folder = StreamWorker(client, settings, name=name, batch=batch, lease_ms=lease_ms)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        console.print(f"worker {folder.name}: folding {settings.stream_partitions} partitions of {settings.store}")
        last = [time.monotonic(), 0]

        def report(n: int) -> None:
            now = time.monotonic()
            if now - float(last[0]) >= 10.0:
                rate = (folder.stats.applied - int(last[1])) / (now - float(last[0]))
                console.print(
                    f"applied {folder.stats.applied} events ({rate:.0f}/s), partitions {folder.owned}, "
                    f"conflicts {folder.stats.conflicts}, claimed {folder.stats.claimed}, capped {folder.stats.capped}"
                )
                last[0], last[1] = now, folder.stats.applied

        folder.run(stop, on_step=report)
        console.print(f"worker {folder.name}: stopped after {folder.stats.applied} events; leases released")


def _open_engine(settings: Settings, model: ModelBundle | None) -> Engine:
    with _progress() as progress:
        task = progress.add_task("replaying event log", total=None)
        engine = Engine.open(
            settings, model=model, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
        progress.update(task, completed=1, total=1)
    return engine


def _show(title: str, response: RecommendResponse, model: ModelBundle, n: int = 8) -> None:
    table = Table(title=title, title_justify="left")
    for col in ("#", "item", "name", "category", "price", "score", "sources"):
        table.add_column(col)
    for rank, rec in enumerate(response.items[:n], start=1):
        item = model.catalog.get(rec.item_id)
        table.add_row(
            str(rank),
            rec.item_id,
            item.name if item else "?",
            (item.category if item else None) or "?",
            f"{item.price:.2f}" if item and item.price is not None else "-",
            f"{rec.score:.3f}",
            ",".join(rec.sources),
        )
    console.print(table)
    console.print(
        f"  session_version={response.session_version}  tier={response.tier}  "
        f"latency={response.timings_ms.get('total', 0):.2f} ms  model={response.model_version}"
    )


@app.command()
def demo(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    once: Annotated[bool, typer.Option("--once", help="Run the scripted session and exit.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic shop.")] = 7,
    workdir: Annotated[Path | None, typer.Option(help="Keep log and model here (default: a temp dir).")] = None,
) -> None:
    """Generate a synthetic shop, train, show the list adapting to a session, then serve."""
    from insession.datasets.synthetic import demo_config, generate

    with _errors():
        clock = SystemClock()
        base = workdir or Path(tempfile.mkdtemp(prefix="insession-demo-"))
        today = clock.now_ms() // DAY_MS * DAY_MS
        console.rule("insession demo")
        with console.status("generating a synthetic shop"):
            shop = generate(demo_config(seed, today))
        console.print(
            f"synthetic shop: {len(shop.items)} items in "
            f"{len({i.category for i in shop.items})} categories, "
            f"{len(shop.tastes)} users, {len(shop.events)} events over 30 days"
        )
        started = time.perf_counter()
        model = train_model(shop.events, items=shop.items)
        model.save(base / "model")
        console.print(
            f"trained model {model.version} in {time.perf_counter() - started:.2f}s "
            f"({model.stats['covisit_pairs']} co-visitation pairs)"
        )
        settings = _settings(None, data_dir=base / "data", model_dir=base / "model", host=host, port=port)
        engine = Engine.open(settings, model=model, clock=clock)
        with _progress() as progress:
            task = progress.add_task("loading history into the event log", total=len(shop.events))
            engine.ingest_all(shop.events, progress=lambda n: progress.advance(task, n))

        # The scripted session: a user with a clear long-term taste starts browsing elsewhere.
        user = max(shop.tastes, key=lambda u: (_share(engine, model, u, shop.tastes[u]), u))
        taste = shop.tastes[user]
        state = engine.state(user)
        touched = {model.catalog.category_of(i.item_id) for i in (state.history + state.events if state else ())}
        fresh = sorted(c for c in {i.category for i in shop.items} if c not in touched and c)
        target = fresh[0] if fresh else sorted({i.category or "" for i in shop.items} - {taste})[0]
        console.rule(f"user {user}: long-term taste '{taste}', now browsing '{target}'")
        _show("before the session", engine.recommend(RecommendRequest(user)), model)
        picks = [i for i in shop.items_in(target)][:3]
        for n, item in enumerate(picks, start=1):
            engine.ingest_raw(
                [
                    {
                        "event_id": f"demo-{user}-{clock.now_ms()}-{n}",
                        "user_id": user,
                        "type": "click",
                        "item_id": item.item_id,
                        "ts": clock.now_ms(),
                        "properties": {"category": item.category},
                    }
                ]
            )
            # The user is now on the item's page: that surface leaves the item itself out.
            response = engine.recommend(RecommendRequest(user, "product_page", 10, {"item_id": item.item_id}))
            if n in (1, len(picks)):
                title = f"after click {n} on {item.item_id} ({item.name}, {item.category}), its product page"
                _show(title, response, model)
        cats = Counter(model.catalog.category_of(r.item_id) for r in response.items)
        console.print(f"top-10 categories now: {dict(cats.most_common())}")
        if once:
            engine.close()
            if workdir is None:
                shutil.rmtree(base, ignore_errors=True)
            return
        from insession.serving.app import create_app
        from insession.serving.server import serve_forever

        console.rule(f"serving on http://{host}:{port}  (Ctrl-C to stop)")
        console.print(f"the demo shop page: http://{host}:{port}/  (user {user} has a long history)")
        console.print(
            f"try: curl -s -X POST http://{host}:{port}/v1/recommendations "
            f"-H 'content-type: application/json' -d '{{\"user_id\": \"{user}\"}}'"
        )
        try:
            serve_forever(create_app(engine), host, port)
        finally:
            engine.close()


def _share(engine: Engine, model: ModelBundle, user: str, category: str) -> float:
    state = engine.state(user)
    if state is None:
        return 0.0
    seen = [model.catalog.category_of(i.item_id) for i in state.history + state.events]
    return (sum(c == category for c in seen) / len(seen)) if len(seen) >= 20 else 0.0


def _read(
    path: Path, format: str, mapping: DataMapping, progress: Progress, label: str
) -> tuple[list[Event], LoadStats]:
    """Read an event file column by column (a spinner meanwhile); fails, naming the values and the
    flag that maps them, when more than the mapping's ``max_skipped`` of its rows are unusable."""
    task = progress.add_task(f"reading {label + ' ' if label else ''}{path.name}", total=None)
    events, stats = read_events(path, format, mapping)
    progress.update(task, completed=len(events), total=len(events))
    return events, stats


def _mapping(
    settings: Settings, columns: str | None, event_types: str | None, properties: str | None, max_skipped: str | None
) -> DataMapping:
    """The configuration's ``[data]`` mapping with the command line's flags on top."""
    return DataMapping.from_options(columns, event_types, properties, max_skipped, base=settings.data)


def _read_items(path: Path) -> list[Item]:
    items, stats = load_items(path)
    stats.check(0.0, path.name)  # a catalog row that cannot be read is a mistake to fix, not to skip
    return items


COLUMNS_HELP = (
    "Map the file's columns to the event fields: FIELD=COLUMN,... with fields user_id, session_id, item_id, "
    "timestamp, event_type, category, brand, price, event_id (COLUMN may be A|B: the first non-empty). "
    "Needed: item_id, timestamp and user_id or session_id. Implies --format generic."
)
EVENT_TYPES_HELP = (
    "What the file's event names mean: VALUE=TYPE,... with types view, click, add_to_cart, purchase, search, "
    "dismiss (view/pv/click/cart/buy/order/... are known already)."
)
PROPERTIES_HELP = "Other columns to keep as event properties: COL,COL,... or 'all'."
MAX_SKIPPED_HELP = "Fail when more than this share of the rows cannot be used (default 1%): 0.05 or 5%."
ColumnsOption = Annotated[str | None, typer.Option(help=COLUMNS_HELP)]
EventTypesOption = Annotated[str | None, typer.Option(help=EVENT_TYPES_HELP)]
PropertiesOption = Annotated[str | None, typer.Option(help=PROPERTIES_HELP)]
MaxSkippedOption = Annotated[str | None, typer.Option(help=MAX_SKIPPED_HELP)]
ItemsOption = Annotated[
    Path | None, typer.Option(help="Items file (CSV/TSV/Parquet: item_id, name, category, brand, price, available).")
]


@app.command()
def evaluate(
    out: Annotated[Path, typer.Option(help="Directory for metrics.json, run.json, report.md/.html and plots.")],
    train: Annotated[Path | None, typer.Option(help="Training events (with --test).")] = None,
    test: Annotated[Path | None, typer.Option(help="Test events, later in time than --train.")] = None,
    data: Annotated[Path | None, typer.Option(help="One event file to split by time (with --test-days).")] = None,
    test_days: Annotated[float, typer.Option(help="With --data: the last N days are the test period.")] = 1.0,
    format: Annotated[str, typer.Option(help=f"One of {', '.join(FORMATS)}.")] = "auto",
    model: Annotated[
        Path | None, typer.Option(help="Evaluate this model (trained on the training side only) instead of training.")
    ] = None,
    baselines: Annotated[str, typer.Option(help=f"Comma list of {', '.join(BASELINES)}, or 'none'.")] = ",".join(
        BASELINES
    ),
    variants: Annotated[
        str,
        typer.Option(
            help="Engine variants: comma list of joint, session, long_term, no_sequence (a second model "
            "trained without the sequence model), or 'none'."
        ),
    ] = ",".join(ALL_VARIANTS),
    workers: Annotated[
        int, typer.Option(help="Processes for training's ranker replay and for replaying the test period.")
    ] = default_workers(),
    config: Annotated[Path | None, typer.Option(help="TOML settings file (session timeout, surfaces).")] = None,
    sequence: Annotated[bool, typer.Option(help=SEQUENCE_HELP + " The no_sequence variant then measures it.")] = False,
    online_factors: Annotated[bool, typer.Option(help=FACTORS_HELP)] = False,
    churn_curve: Annotated[
        bool, typer.Option(help="Also replay the engine under five churn budgets: relevance vs churn@20 in the report.")
    ] = False,
    hot_threshold: Annotated[
        float | None,
        typer.Option(
            help="Hot-spot control on the evaluated lists: discount items whose popularity relative to the most "
            "popular item's is above this (0 < x <= 1); compare top1%share@20 with a run without it."
        ),
    ] = None,
    hot_discount: Annotated[float, typer.Option(help="With --hot-threshold: the discount per ln(ratio).")] = 1.0,
    learn_online: Annotated[
        bool,
        typer.Option(
            help="Predict, then learn: the engine's online co-visitation, and every baseline, also learn from "
            "test events as they are replayed. Off (default), all learn from training events only."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help=SEED_HELP)] = 0,
    columns: ColumnsOption = None,
    event_types: EventTypesOption = None,
    properties: PropertiesOption = None,
    max_skipped: MaxSkippedOption = None,
) -> None:
    """Score the engine, its ablations and the baselines on the next-item protocol; write a report."""
    with _errors():
        if (train is None) != (test is None) or (train is None) == (data is None):
            raise ValidationError(
                [FieldError("train/test/data", "either --train and --test, or --data (with --test-days)", "neither")]
            )
        settings = _settings(config)
        mapping = _mapping(settings, columns, event_types, properties, max_skipped)

        def names(text: str, field_name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
            if text.strip().lower() == "none":
                return ()
            picked = tuple(n.strip() for n in text.split(",") if n.strip())
            bad = [n for n in picked if n not in allowed]
            if bad:
                raise ValidationError([FieldError(field_name, f"a comma list of {', '.join(allowed)}", ", ".join(bad))])
            return picked

        options = EvalOptions(
            baselines=names(baselines, "baselines", BASELINES),
            variants=names(variants, "variants", ALL_VARIANTS),
            workers=max(1, workers),
            train=_train_config(sequence, online_factors, seed=seed),
            churn_curve=churn_curve,
            hot=None if hot_threshold is None else (hot_threshold, hot_discount),
            learn_online=learn_online,
        )
        if hot_threshold is not None:  # the same checks as a surface's own settings
            SurfaceConfig("evaluate", hot_threshold=hot_threshold, hot_discount=hot_discount)
        bundle = ModelBundle.load(model) if model is not None else None
        started = time.perf_counter()
        with _progress() as progress:
            if data is not None:
                events, stats = _read(data, format, mapping, progress, "")
                split = time_split(events, test_days, settings.session)
                console.print(f"read {stats.summary()}")
            else:
                assert train is not None and test is not None
                train_events, train_stats = _read(train, format, mapping, progress, "train")
                test_events, test_stats = _read(test, format, mapping, progress, "test")
                split = Split(
                    time_ordered(train_events), time_ordered(test_events), f"files: {train.name} / {test.name}"
                )
                console.print(f"read train: {train_stats.summary()}; test: {test_stats.summary()}")

            def stage(description: str, total: int | None) -> Callable[[int], None]:
                task = progress.add_task(description, total=total)
                return lambda n: progress.advance(task, n)

            try:
                result = evaluate_split(split, settings, bundle, options, stage)
            except ValueError as exc:
                raise ValidationError([FieldError("data", "an evaluable split", str(exc))]) from None
        written = report.write(result, out, title=f"insession evaluation: {split.description}")
        table = Table(title=f"{result.run['pairs']} pairs from {result.run['test_sessions']} test sessions")
        table.add_column("model")
        for key in ("HR@20", "MRR@20", "NDCG@20", "coverage@20"):
            table.add_column(key, justify="right")
        for name, values in result.metrics.items():
            table.add_row(name, *(f"{values[k]:.4f}" for k in ("HR@20", "MRR@20", "NDCG@20", "coverage@20")))
        console.print(table)
        lift = result.run["comparisons"].get("in_session_lift_NDCG@20")
        if lift is not None:
            console.print(f"in-session lift (joint vs long-term only), NDCG@20: {lift:+.1%}")
        console.print(
            f"written to {out}/ ({', '.join(p.name for p in written.values())}) in {time.perf_counter() - started:.1f}s"
        )


@app.command("import")
def import_history(
    data: Annotated[Path, typer.Option(help="Event file (or a directory holding one): the history to load.")],
    model: Annotated[Path, typer.Option(help="The model directory `serve` will use (its catalog).")],
    format: Annotated[str, typer.Option(help=f"One of {', '.join(FORMATS)}.")] = "auto",
    columns: ColumnsOption = None,
    event_types: EventTypesOption = None,
    properties: PropertiesOption = None,
    max_skipped: MaxSkippedOption = None,
    items: ItemsOption = None,
    data_dir: Annotated[Path | None, typer.Option(help="The embedded server's data directory.")] = None,
    store: Annotated[
        str, typer.Option(help="memory (the embedded log and state in --data-dir) or redis://HOST:PORT.")
    ] = "memory",
    workers: Annotated[
        int,
        typer.Option(help="With redis://: stream workers this command runs to fold what it appended (0: yours do)."),
    ] = 1,
    config: Annotated[Path | None, typer.Option(help="TOML settings file ([data] mapping, session).")] = None,
) -> None:
    """Load a shop's history into the serving state, so users get their long-term personalisation on
    their first request: every event through the same validation, log and fold as live events, in
    time order. Idempotent: importing the same file again adds nothing (event ids come from the
    file, or from each row's content). Stop the embedded server first (it holds the data directory)."""
    with _errors():
        settings = _settings(config, model_dir=model, store=store, data_dir=data_dir)
        if settings.store != "memory":  # a re-import must still find what the first one appended
            settings = settings.with_(dedup_window_s=max(settings.dedup_window_s, settings.state_ttl_s))
        mapping = _mapping(settings, columns, event_types, properties, max_skipped)
        started = time.perf_counter()
        checkpointing = ""
        with _progress() as progress:
            events, stats = _read(data, format, mapping, progress, "")
            catalog = _read_items(items) if items is not None else []
            events.sort(key=lambda e: e.ts)  # stable: file order breaks ties
            task = progress.add_task("opening the state", total=None)
            engine = Engine.open(
                settings, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
            progress.update(task, completed=1, total=1)
        try:
            changed = engine.update_items(catalog) if catalog else None
            with _progress() as progress:
                task = progress.add_task("importing events", total=len(events))
                # Explain's checkpoints are taken from this fold as it goes (the first explanation
                # then folds no history), unless the state is not the fold up to the newest one.
                result = engine.ingest_all(
                    events, batch=5000, progress=lambda n: progress.advance(task, n), checkpoint=True
                )
                if not engine.folds_inline:
                    _fold_on_redis(engine, workers, progress)
            took = time.perf_counter() - started
            if result.checkpoints:
                checkpointing = f"checkpoints for explain: {result.checkpoints} written while importing"
            if engine.folds_inline:  # the rest of the log, if the import could not checkpoint it
                with _progress() as progress:
                    task = progress.add_task("checkpoints for explain", total=None)
                    t = time.perf_counter()
                    folded = engine.write_checkpoints(lambda n, total: progress.update(task, completed=n, total=total))
                    if folded or not result.checkpoints:
                        took_s = time.perf_counter() - t
                        checkpointing = f"checkpoints for explain: {folded} events folded in {took_s:.1f}s"
        finally:
            engine.close()
        console.print(f"read {stats.summary()}")
        if changed is not None:
            console.print(f"items: {changed.changed} added or changed, {changed.unchanged} as they were")
        console.print(f"{result.summary()} in {took:.1f}s ({len(events) / max(took, 1e-9):,.0f} events/s)")
        if checkpointing:
            console.print(checkpointing)
        refused = sum(result.refused.values())
        if events and refused / len(events) > mapping.max_skipped:
            why, count = result.refused.most_common(1)[0]
            raise ValidationError(
                [
                    FieldError(
                        why.split(":")[0],
                        f"at most max_skipped = {mapping.max_skipped:.2%} of the events refused "
                        "(import into an empty data directory, or one whose users have no newer events)",
                        f"{refused} refused, {count} of them {why} (e.g. {result.examples[why]})",
                    )
                ]
            )


def _fold_on_redis(engine: Engine, workers: int, progress: Progress) -> None:
    """Run stream workers here until everything appended is folded (a bar over the backlog)."""
    for _ in range(max(workers, 0)):
        engine.start_worker()
    if workers <= 0:
        return
    task = progress.add_task("folding on Redis", total=None)
    first: int | None = None
    while True:
        backlog = int(engine.store_health().get("fold_backlog", 0))
        first = backlog if first is None else first
        progress.update(task, completed=first - backlog, total=first)
        if backlog == 0:
            return
        time.sleep(0.2)


@app.command("sample-data")
def sample_data(
    out: Annotated[Path, typer.Option(help="Directory for events.csv, items.csv and shop.toml.")] = Path("shop"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic shop.")] = 7,
    users: Annotated[int, typer.Option(help="Shoppers in the export.")] = 300,
) -> None:
    """Write a small shop export to try your own-data path on: events.csv with a shop's own column
    and event names (customer, sku, cat, action, when; page_view, wishlist, basket, order), no
    session column; items.csv; and shop.toml, the \\[data] mapping that reads them."""
    from insession.clock import DAY_MS as DAY
    from insession.datasets.synthetic import ShopConfig, generate, write_export

    with _errors():
        if users < 1:
            raise ValidationError([FieldError("users", "an integer >= 1", describe(users))])
        today = SystemClock().now_ms() // DAY * DAY
        shop = generate(ShopConfig(seed=seed, n_users=users, end_ms=today))
        written = write_export(shop, out)
        console.print(f"{len(shop.events)} events of {users} shoppers, {len(shop.items)} items:")
        for path in written.values():
            console.print(f"  {path}")


@app.command()
def bench(
    items: Annotated[int, typer.Option(help="Catalog size of the synthetic shop.")] = 10_000,
    out: Annotated[Path, typer.Option(help="JSON file for the figures.")] = Path("bench.json"),
    requests: Annotated[int, typer.Option(help="Mixed steps (an event, a list, a bare call) at most.")] = 2000,
    seconds: Annotated[
        float, typer.Option(help="Time limit of the mixed phase (and of the ingest phase, max 10 s).")
    ] = 60.0,
    sequence: Annotated[bool, typer.Option(help="Train the sequence model too (torch extra).")] = False,
    users: Annotated[
        int | None, typer.Option(help="Shoppers generating the training events (default: one per 20 items).")
    ] = None,
    scale_out: Annotated[
        bool,
        typer.Option(
            help="Two servers and two stream workers on one Redis, then on a 3-node Redis Cluster, against "
            "the embedded server, L1 on and off (starts its own redis-server and cluster unless --store is given)."
        ),
    ] = False,
    store: Annotated[
        str | None,
        typer.Option(
            help="With --scale-out: an existing redis://HOST:PORT or redis+cluster://HOST:PORT,... to use "
            "instead of the one of that kind it starts."
        ),
    ] = None,
) -> None:
    """Start the real server on loopback, drive it from another process, write latency and throughput."""
    from insession.bench import run_bench, write
    from insession.bench_scale import run_scale_bench

    with _errors():
        if sequence:
            _train_config(True)  # names the missing extra before minutes of work
        if store is not None and not scale_out:
            raise ValidationError([FieldError("store", "--scale-out with it", "--store alone")])
        with console.status("benchmark") as status:
            if scale_out:
                figures = run_scale_bench(
                    items, requests, seconds, redis_url=store, progress=lambda s: status.update(f"benchmark: {s}")
                )
                write(figures, out)
                _scale_table(figures)
                console.print(f"written to {out}")
                return
            figures = run_bench(
                items,
                requests,
                seconds=seconds,
                sequence=sequence,
                users=users,
                progress=lambda stage: status.update(f"benchmark: {stage}"),
            )
        write(figures, out)
        table = Table(title=f"insession bench: {figures['items']} items, {figures['requests']} mixed steps")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in figures.items():
            table.add_row(key, str(value))
        console.print(table)
        console.print(f"written to {out}")


def _scale_table(figures: dict[str, Any]) -> None:
    table = Table(title=f"insession bench --scale-out: {figures['items']} items")
    for col in ("setup", "rec p50 ms", "p95", "p99", "requests/s", "HTTP ingest ev/s", "errors"):
        table.add_column(col, justify="right" if col != "setup" else "left")
    setups = ["embedded"] + [
        f"{b}_{p}" for b in ("redis", "cluster") for p in ("one_driver", "two_drivers", "no_l1_one_driver")
    ]
    for key in setups:
        f = figures[key]
        table.add_row(
            key,
            *(str(f[k]) for k in ("recommend_p50_ms", "recommend_p95_ms", "recommend_p99_ms", "requests_per_s")),
            str(f["ingest_events_per_s"]),
            str(f["errors"]),
        )
    console.print(table)
    for backend in ("redis", "cluster"):
        for figure in ("api_append_events_per_s", "worker_fold_events_per_s", "l1_hit_rate", "l1_saves_p50_ms"):
            console.print(f"{backend}_{figure}: {figures[f'{backend}_{figure}']}")


def _explainer(model: Path, data_dir: Path | None, config: Path | None) -> tuple[Explainer, Settings]:
    from insession.checkpoints import CHECKPOINTS_FILE, CheckpointStore
    from insession.log.sqlite import SqliteEventLog
    from insession.manifest import REQUEST_LOG_FILE, RequestLog

    settings = _settings(config, model_dir=model, data_dir=data_dir)
    for name in (LOG_FILE, REQUEST_LOG_FILE):
        if not (settings.data_dir / name).is_file():
            raise ValidationError([FieldError("data_dir", f"a directory holding {name}", str(settings.data_dir))])
    bundle = ModelBundle.load(model)
    log = SqliteEventLog(settings.data_dir / LOG_FILE)
    requests = RequestLog(settings.data_dir / REQUEST_LOG_FILE)
    checkpoints = CheckpointStore(settings.data_dir / CHECKPOINTS_FILE)
    return Explainer(bundle, settings, log, requests, checkpoints), settings


@app.command()
def explain(
    request_id: Annotated[str, typer.Argument(help="The request_id of a served list.")],
    model: Annotated[Path, typer.Option(help="The model directory that served it.")],
    data_dir: Annotated[Path | None, typer.Option(help="Where the event log and request log live.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file (the surfaces it was served with).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
) -> None:
    """Recompute a served list from its manifest and the event log; say why each item is there.

    Exits 1, with the difference, if the recomputed list is not the one served."""
    import json

    with _errors():
        explainer, _ = _explainer(model, data_dir, config)
        result = explainer.explain(request_id)
        if as_json:
            console.print_json(json.dumps(result.to_dict()))
        else:
            m = result.manifest
            console.print(
                f"request {request_id}: user {m['user_id']}, surface {m['surface']}, k {m['k']}, log position "
                f"{m['log_position']}, session_version {m['session_version']}, tier {result.tier}"
                + (f", cut {', '.join(result.cut)}" if result.cut else "")
                + (f"\n{result.note}" if result.note else "")
            )
            table = Table(title_justify="left")
            for col in ("#", "item", "score", "sources", "top contributions"):
                table.add_column(col)
            for item in result.items:
                sources = ", ".join(f"{k} {v:.3g}" for k, v in item.sources.items())
                top = ", ".join(f"{k} {v:+.3f}" for k, v in list(item.contributions.items())[:4])
                table.add_row(
                    str(item.position), item.item_id, f"{item.score:.4f}", sources, top + "".join(item.moved_by)
                )
            console.print(table)
            for rule, removed in result.removed_by_rule.items():
                console.print(f"rule {rule} removed {len(removed)}: {', '.join(removed[:8])}")
        if not result.identical:
            if not as_json:
                console.print("recomputed list differs from the served one:", style="red")
                for line in result.diff:
                    console.print(f"  {line}")
            raise typer.Exit(1)
        if not as_json:
            console.print("identical: the recomputed list is the served list")


@app.command()
def forget(
    user_id: Annotated[str, typer.Argument(help="The user to erase (an erasure request).")],
    model: Annotated[Path, typer.Option(help="The model directory the server uses.")],
    data_dir: Annotated[Path | None, typer.Option(help="The embedded server's data directory.")] = None,
    store: Annotated[
        str, typer.Option(help="memory (the embedded log and state in --data-dir) or redis://HOST:PORT.")
    ] = "memory",
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
) -> None:
    """Forget a user: their events leave the event log (compacted), the replay checkpoints and the
    state snapshot; their request manifests go (explaining one answers 410). Their share of item
    aggregates stays, anonymised, so every other user's lists still explain identically. Stop the
    embedded server first (or send DELETE /v1/users/USER_ID to it)."""
    import json

    with _errors():
        settings = _settings(config, model_dir=model, store=store, data_dir=data_dir)
        engine = _open_engine(settings, None)
        try:
            result = engine.forget(user_id)
        finally:
            engine.close()
        console.print_json(json.dumps(result.to_dict()))


@app.command()
def diff(
    request_id: Annotated[str, typer.Argument(help="The request_id of a served list.")],
    model: Annotated[Path, typer.Option(help="The model directory that served it.")],
    other: Annotated[Path, typer.Option(help="Another model directory to compare with.")],
    data_dir: Annotated[Path | None, typer.Option(help="Where the event log and request log live.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
) -> None:
    """The same request, at the same moment, under two model versions, side by side."""
    with _errors():
        explainer, settings = _explainer(model, data_dir, config)
        manifest = explainer.manifest(request_id)
        first = explainer.recompute(manifest)
        second = Explainer(ModelBundle.load(other), settings, explainer.log, explainer.requests).recompute(manifest)
        table = Table(title=f"request {request_id}", title_justify="left")
        table.add_column("#")
        table.add_column(f"model {explainer.model.version}")
        table.add_column(f"model {ModelBundle.load(other).version}")
        for n in range(max(len(first.items), len(second.items))):
            a = first.items[n].item_id if n < len(first.items) else ""
            b = second.items[n].item_id if n < len(second.items) else ""
            table.add_row(str(n + 1), a, b if b != a else Text(b, style="dim"))
        console.print(table)
        shared = len({i.item_id for i in first.items} & {i.item_id for i in second.items})
        console.print(f"{shared} of {len(first.items)} items in both lists")


@app.command()
def replay(
    data_dir: Annotated[Path | None, typer.Option(help="Where the event log and the state snapshot live.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file (the session timeout).")] = None,
    quarantine: Annotated[
        bool,
        typer.Option(
            help="First move every log record that is not a valid event (an older version's, or edited by hand) "
            f"to {QUARANTINE_FILE} in the data directory (kept, never deleted), so the directory opens again."
        ),
    ] = False,
) -> None:
    """Rebuild every session state and item activity from the event log and compare them, byte for
    byte, with the live state's snapshot at the same log position. Exits 1 on any difference."""
    if quarantine:
        with _errors():
            if not _quarantine(_settings(config, data_dir=data_dir).data_dir):
                return
    from insession.clock import ManualClock
    from insession.features.activity import NAMESPACE
    from insession.log.sqlite import SqliteEventLog
    from insession.online import covisit
    from insession.replay import check
    from insession.store.memory import MemoryFeatureStore

    with _errors():
        settings = _settings(config, data_dir=data_dir)
        snapshot = settings.data_dir / SNAPSHOT_FILE
        if not snapshot.is_file():
            raise ValidationError(
                [FieldError("data_dir", f"a directory holding {SNAPSHOT_FILE}", str(settings.data_dir))]
            )
        store = MemoryFeatureStore(ManualClock(0))  # compare everything, expired or not
        store.load(snapshot)
        users = {u: s.to_bytes() for u in store.users() if (s := store.get_session(u)) is not None}
        keys = store.keys(NAMESPACE)
        items = {k: v for k, v in zip(keys, store.get_many(NAMESPACE, keys), strict=True) if v is not None}
        fkeys = store.keys(covisit.NAMESPACE)
        followers = {  # in today's form, as the users' states: lists written before it are JSON
            k: covisit.Neighbours.from_bytes(v).to_bytes()
            for k, v in zip(fkeys, store.get_many(covisit.NAMESPACE, fkeys), strict=True)
            if v is not None
        }
        log = SqliteEventLog(settings.data_dir / LOG_FILE)
        with console.status("replaying the event log"):
            result = check(
                log.read(),
                store.applied_position(),
                settings.session,
                users,
                items,
                followers,
                learn=settings.learn_online,
            )
        log.close()
        console.print(
            f"replayed {result.position} events: {result.users} users, {result.items} items; "
            f"{len(result.differing_users)} users, {len(result.differing_items)} items and "
            f"{len(result.differing_followers)} online co-visitation lists differ from the snapshot"
        )
        if not result.identical:
            console.print(f"differing users: {', '.join(result.differing_users[:10])}")
            console.print(f"differing items: {', '.join(result.differing_items[:10])}")
            console.print(f"differing co-visitation lists: {', '.join(result.differing_followers[:10])}")
            raise typer.Exit(1)
        console.print("identical: the log rebuilds the live state byte for byte")


QUARANTINE_FILE = "quarantine.jsonl"


def _quarantine(data_dir: Path) -> bool:
    """Move the log's invalid records aside; returns whether a snapshot is left to check against."""
    from insession.log.sqlite import SqliteEventLog

    path = data_dir / LOG_FILE
    if not path.is_file():
        raise ValidationError([FieldError("data_dir", f"a directory holding {LOG_FILE}", str(data_dir))])
    log = SqliteEventLog(path, exclusive=True)
    try:
        with console.status("checking every record of the event log"):
            moved = log.quarantine(data_dir / QUARANTINE_FILE)
    finally:
        log.close()
    if not moved:
        console.print("quarantine: every record of the event log is a valid event")
        return True
    console.print(
        f"quarantine: moved {len(moved)} invalid records (positions {', '.join(map(str, moved[:10]))}"
        f"{', ...' if len(moved) > 10 else ''}) to {data_dir / QUARANTINE_FILE}"
    )
    snapshot = data_dir / SNAPSHOT_FILE
    if snapshot.is_file():
        from insession.store.memory import MemoryFeatureStore

        store = MemoryFeatureStore()
        try:
            store.load(snapshot)
            stale = store.applied_position() >= min(moved)
        except InsessionError:
            stale = True
        if stale:  # it folded a record that is gone: the state is rebuilt from the log on the next start
            aside = snapshot.with_name(SNAPSHOT_FILE + ".before-quarantine")
            snapshot.replace(aside)
            console.print(f"the state snapshot covered them: moved to {aside.name}; the next start rebuilds state")
            return False
    return snapshot.is_file()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
