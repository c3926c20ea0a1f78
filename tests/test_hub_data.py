"""Datasets from the Hugging Face hub, offline: a hub cache built by hand in a
temporary directory (``datasets--ORG--NAME/refs/main`` + ``snapshots/<REV>/``,
the layout ``snapshot_download`` reads with ``HF_HUB_OFFLINE=1``), and every
TRL dataset format the stages take."""

import json
import re

import mlx_lm
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_align.batches.kto import encode_kto
from mlx_align.batches.preference import encode_pairs
from mlx_align.cli import main
from mlx_align.config.build import build_config
from mlx_align.config.stages import SFTConfig
from mlx_align.core.errors import DataError, UserError
from mlx_align.data.formats import converter, extract_implicit_prompt
from mlx_align.data.jsonl import Record, read_jsonl
from mlx_align.data.prompts import check_prompt_records, encode_prompts
from mlx_align.data.source import DataOptions, DataSource, load_split
from mlx_align.data.tokenize import encode_prompt, encode_sft_record
from mlx_align.rewards.registry import reward_columns

REV = "0123456789abcdef0123456789abcdef01234567"
WORDS = "apple river stone cloud tiger piano lemon forest".split()


def parquet(path, rows, row_group_size=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """``add(repo_id, {path: rows or text})`` puts a dataset in a fresh offline hub cache."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "mlx-align-cache"))

    def add(repo_id: str, files: dict) -> object:
        repo = cache / ("datasets--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(REV)
        snapshot = repo / "snapshots" / REV
        for name, content in files.items():
            if isinstance(content, str):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                (snapshot / name).write_text(content)
            elif name.endswith(".parquet"):
                parquet(snapshot / name, content)
            else:
                write_jsonl(snapshot / name, content)
        return snapshot

    return add


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    return exit_info.value.code, [x for x in err if not x.startswith("mlx-align: BLAS")]


class _no_exit:
    """main() returns on success; fail loudly if it exits."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is SystemExit:
            raise AssertionError(f"mlx-align exited with {value.code}")
        return False


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return mlx_lm.load(str(tiny_model))[1]


def source(data: str, **options) -> DataSource:
    return DataSource(data, DataOptions(**options))


# ---------------------------------------------------------------- implicit prompt


def chat(*turns):
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def implicit_pairs():
    return [
        {
            "chosen": chat(f"What about the {w} {i}?", "It is good."),
            "rejected": chat(f"What about the {w} {i}?", "It is bad."),
        }
        for i in range(2)
        for w in WORDS
    ]


def test_trl_extract_prompt_boundaries():
    """Where TRL's ``extract_prompt`` puts the boundary, character or message."""
    assert extract_implicit_prompt("The sky is blue.", "The sky is green.") == (
        "The sky is",  # the space before the first difference starts the completions
        " blue.",
        " green.",
    )
    assert extract_implicit_prompt("Answer:5", "Answer:6") == ("Answer:", "5", "6")
    # One a prefix of the other: TRL's loop ends on the shorter one's last position.
    assert extract_implicit_prompt("Yes.", "Yes. Sure.") == ("Yes", ".", ". Sure.")
    assert extract_implicit_prompt("blue", "green") is None  # nothing shared
    a, b = chat("Hi?", "Hello."), chat("Hi?", "Go away.")
    assert extract_implicit_prompt(a, b) == (a[:1], a[1:], b[1:])
    three = chat("Hi?", "Hello.", "And you?", "Fine.")
    other = chat("Hi?", "Hello.", "And you?", "Bad.")
    assert extract_implicit_prompt(three, other) == (three[:3], three[3:], other[3:])


def test_implicit_prompt_pairs_train_dpo_from_parquet(
    hub, tiny_model, tmp_path, capsys, tokenizer
):
    """Conversational pairs with the prompt inside chosen and rejected, in a hub
    parquet file: the loader's boundary is the hand-built explicit pair's,
    token by token, and DPO trains on them through the CLI."""
    rows = implicit_pairs()
    hub("trl-lib/implicit", {"data/train-00000-of-00001.parquet": rows})
    records = load_split("trl-lib/implicit", "train", required=True)
    assert records[0].path == "trl-lib/implicit/data/train-00000-of-00001.parquet"
    assert [r.line for r in records] == list(range(1, len(rows) + 1))
    explicit = [
        {
            "prompt": r["chosen"][:1],
            "chosen": r["chosen"][1:],
            "rejected": r["rejected"][1:],
        }
        for r in rows
    ]
    hand = read_jsonl(write_jsonl(tmp_path / "explicit.jsonl", explicit))
    for loaded, built in zip(
        encode_pairs(tokenizer, records, 64),
        encode_pairs(tokenizer, hand, 64),
        strict=True,
    ):
        assert loaded.chosen == built.chosen and loaded.rejected == built.rejected
    first = encode_pairs(tokenizer, records[:1], 64)[0].chosen
    prompt = tokenizer.apply_chat_template(
        rows[0]["chosen"][:1], tokenize=False, add_generation_prompt=True
    )
    start = first.completion_start
    assert first.tokens[:start] == tokenizer.encode(prompt, add_special_tokens=False)
    assert tokenizer.decode(first.tokens[start:]).startswith("It is good.")

    out = tmp_path / "dpo"
    argv = ["dpo", "--model", str(tiny_model), "--data", "trl-lib/implicit"]
    flags = [
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "64",
    ]
    with _no_exit():
        main([*argv, *flags, "--log-every", "1", "--save-every", "0", "--no-compile"])
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m][-1] == 2
    assert (out / "adapters.safetensors").exists()
    said = capsys.readouterr().out
    assert "trl-lib/implicit: train split 'train', 16 rows" in said
    assert "no validation or test split" in said


def test_text_implicit_prompt_boundary_token_by_token(tokenizer, tmp_path):
    rows = [
        {
            "chosen": "Question: What is 2 + 3?\nAnswer: It is 5.",
            "rejected": "Question: What is 2 + 3?\nAnswer: It is 6.",
        }
    ]
    records = [Record("x", 1, converter()(rows[0], "x", 1))]
    assert records[0].fields["prompt"] == "Question: What is 2 + 3?\nAnswer: It is"
    assert records[0].fields["chosen"] == " 5."
    hand = {
        "prompt": "Question: What is 2 + 3?\nAnswer: It is",
        "chosen": " 5.",
        "rejected": " 6.",
    }
    (loaded,) = encode_pairs(tokenizer, records, 64)
    (built,) = encode_pairs(tokenizer, [Record("y", 1, hand)], 64)
    assert loaded == built
    prompt_ids = tokenizer.encode(hand["prompt"])
    assert loaded.chosen.tokens[: loaded.chosen.completion_start] == prompt_ids
    assert loaded.chosen.tokens[-1] == tokenizer.eos_token_id


# ---------------------------------------------------------------- GSM8K


GSM8K = [
    (
        "Natalia sold 48 clips in April and half as many in May. How many in all?",
        "In May she sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>72.\n#### 72",
    ),
    (
        "Weng earns $12 an hour. How much for 50 minutes?",
        "12/60 = $<<12/60=0.2>>0.2 per minute.\n0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    ),
    ("Betty has half of the $100 she needs. How much more?", "#### 1,050"),
]


def gsm8k_files():
    rows = [{"question": q, "answer": a} for q, a in GSM8K]
    return {
        "main/train-00000-of-00001.parquet": rows[:2],
        "main/test-00000-of-00001.parquet": rows,
        "socratic/test-00000-of-00001.parquet": rows[:1],
    }


def test_gsm8k_runs_eval_math_with_answers_from_the_hash_line(
    hub, tiny_model, tmp_path, capsys
):
    hub("openai/gsm8k", gsm8k_files())
    out = tmp_path / "judged.jsonl"
    argv = ["eval-math", "--model", str(tiny_model), "--data", "openai/gsm8k:main"]
    with _no_exit():
        main([*argv, "--max-tokens", "4", "--out", str(out)])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["72", "10", "1,050"]
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert {r["path"] for r in rows} == {
        "openai/gsm8k/main/test-00000-of-00001.parquet"
    }
    assert "math accuracy: " in capsys.readouterr().out
    # GRPO's prompts: the question, and the math reward's column is there.
    records = load_split("openai/gsm8k:main", "train", required=True)
    check_prompt_records(records, needs=reward_columns(["math"]))
    assert [r.fields["prompt"] for r in records] == [q for q, _ in GSM8K[:2]]
    assert records[0].fields["completion"] == GSM8K[0][1]  # what SFT trains on
    # No config named: the dataset's configs are listed.
    code, lines = run_cli([*argv[:-1], "openai/gsm8k"], capsys)
    assert (code, lines) == (
        2,
        [
            "error: openai/gsm8k: this dataset has configs main, socratic: pick one, "
            "e.g. --data openai/gsm8k:main"
        ],
    )


# ---------------------------------------------------------------- field map, max samples, splits


def test_field_map_renames_columns_for_sft(hub, tiny_model, tmp_path, capsys):
    rows = [{"instruction": f"Name a {w}.", "output": f" A {w}."} for w in WORDS]
    hub("someone/instruct", {"train.jsonl": rows})
    mapped = load_split(
        source("someone/instruct", field_map="prompt=instruction,completion=output"),
        "train",
    )
    assert mapped[0].fields == {"prompt": "Name a apple.", "completion": " A apple."}
    with pytest.raises(
        DataError, match=r"^someone/instruct/train.jsonl:1: no field 'input'"
    ):
        load_split(source("someone/instruct", field_map="prompt=input"), "train")
    out = tmp_path / "sft"
    argv = [
        "sft",
        "--model",
        str(tiny_model),
        "--data",
        "someone/instruct",
        "--out",
        str(out),
    ]
    with _no_exit():
        main(
            [
                *argv,
                "--field-map",
                "prompt=instruction, completion=output",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--max-length",
                "32",
                "--no-compile",
                "--save-every",
                "0",
            ]
        )
    assert (out / "adapters.safetensors").exists()
    capsys.readouterr()
    code, lines = run_cli([*argv, "--field-map", "prompt"], capsys)
    assert (code, lines) == (
        2,
        [
            "error: --field-map: must be NEW=OLD pairs separated by commas, e.g. "
            "prompt=question,answer=solution, got 'prompt'"
        ],
    )


def test_max_samples_caps_each_split_across_shards(hub):
    rows = [{"prompt": f"Q{i}", "completion": f" A{i}"} for i in range(10)]
    hub(
        "someone/shards",
        {
            "data/train-00000-of-00002.parquet": rows[:4],
            "data/train-00001-of-00002.parquet": rows[4:],
            "data/validation-00000-of-00001.parquet": rows[:3],
        },
    )
    capped = load_split(source("someone/shards", max_samples=5), "train")
    assert [(r.path.rsplit("/", 1)[1], r.line) for r in capped] == [
        ("train-00000-of-00002.parquet", n) for n in (1, 2, 3, 4)
    ] + [("train-00001-of-00002.parquet", 1)]
    assert [r.fields["prompt"] for r in capped] == [f"Q{i}" for i in range(5)]
    assert len(load_split(source("someone/shards", max_samples=2), "valid")) == 2
    assert len(load_split("someone/shards", "train")) == 10


def test_splits_by_name_readme_configs_and_local_copies(hub, tmp_path, capsys):
    pairs = [{"prompt": "Q", "chosen": " yes", "rejected": " no"}] * 3
    snapshot = hub(
        "someone/prefs",
        {
            "data/train_prefs-00000-of-00001.parquet": pairs,
            "data/test_prefs-00000-of-00001.parquet": pairs[:1],
            "data/train_sft-00000-of-00001.parquet": [
                {"prompt": "Q", "completion": " A"}
            ],
        },
    )
    data = source("someone/prefs", data_split="train_prefs")
    assert len(load_split(data, "train")) == 3
    valid = load_split(data, "valid")  # found, and said
    assert valid[0].path.endswith("test_prefs-00000-of-00001.parquet")
    assert "someone/prefs: valid split 'test', 1 rows" in capsys.readouterr().out
    assert load_split(source("someone/prefs", valid_split="none"), "valid") is None
    with pytest.raises(
        DataError,
        match=r"^someone/prefs: no split 'dev' \(splits: test_prefs, train_prefs, train_sft\)$",
    ):
        load_split(
            source("someone/prefs", data_split="train_prefs", valid_split="dev"),
            "valid",
        )
    # A local copy of the snapshot reads the same, named by its own paths.
    local = load_split(DataSource(str(snapshot), data.options), "train")
    assert local[0].fields == load_split(data, "train")[0].fields
    assert local[0].path == str(snapshot / "data/train_prefs-00000-of-00001.parquet")
    # README.md's configs say which files are which split.
    readme = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: raw/a*.json\n  - split: holdout\n    path: raw/b.json\n---\n# card\n"
    rows = json.dumps([{"text": "one"}, {"text": "two"}])
    hub(
        "someone/carded", {"README.md": readme, "raw/a1.json": rows, "raw/b.json": rows}
    )
    assert [r.fields["text"] for r in load_split("someone/carded", "train")] == [
        "one",
        "two",
    ]
    assert load_split("someone/carded", "valid") is None
    assert (
        len(load_split(source("someone/carded", valid_split="holdout"), "valid")) == 2
    )
    # The flags reach the stage's config, and a split cannot be both.
    config = build_config(
        SFTConfig,
        {"model": "m", "data": "a/b", "data_split": "x", "max_samples": 3},
        None,
    )
    assert config.source == DataSource("a/b", DataOptions("x", "", 3, ""))
    with pytest.raises(UserError, match="--valid-split: is --data-split itself"):
        build_config(
            SFTConfig, {"model": "m", "data": "a/b", "valid_split": "train"}, None
        )


def test_local_directories_read_as_before(sft_dir):
    records = load_split(str(sft_dir), "train", required=True)
    assert records == read_jsonl(sft_dir / "train.jsonl")
    assert load_split(source(str(sft_dir), max_samples=2), "train") == records[:2]


# ---------------------------------------------------------------- other TRL formats


def test_unpaired_chat_kto_and_system_turns(hub, tokenizer):
    system = {"role": "system", "content": "Be brief."}
    rows = [
        {
            "prompt": [system, {"role": "user", "content": f"A {w}?"}],
            "completion": [
                {"role": "assistant", "content": "Yes." if i % 2 else "No."}
            ],
            "label": bool(i % 2),
        }
        for i, w in enumerate(WORDS[:4])
    ]
    messages = [
        {
            "messages": [
                system,
                {"role": "user", "content": "Hi?", "name": "ann"},  # null elsewhere
                {"role": "assistant", "content": "Hello."},
            ]
        }
    ]
    hub("someone/kto", {"data/train-00000-of-00001.parquet": rows})
    hub("someone/chat", {"data/train-00000-of-00001.parquet": messages})
    examples = encode_kto(tokenizer, load_split("someone/kto", "train"), 128)
    assert [e.label for e in examples] == [False, True, False, True]
    chats = load_split("someone/chat", "train")
    sft = encode_sft_record(tokenizer, chats[0])
    text = tokenizer.decode(sft.tokens[: sft.completion_start])
    assert "Be brief." in text and "Hi?" in text and "Hello." not in text
    assert chats[0].fields["prompt"] == messages[0]["messages"][:2]  # GRPO's prompt
    assert chats[0].fields["messages"][0] == system  # parquet's null "name": gone
    check_prompt_records(chats)
    assert encode_prompts(tokenizer, chats) == [encode_prompt(tokenizer, chats[0])]


def test_online_only_the_splits_read_are_downloaded(hub, tmp_path, monkeypatch):
    """With the hub in reach (here faked): the file list, then README.md and
    the train split's files only."""
    import huggingface_hub

    snapshot = hub(
        "someone/big",
        {
            "README.md": "# no configs\n",
            "data/train-00000-of-00001.parquet": [{"text": "a"}],
            "data/test-00000-of-00001.parquet": [{"text": "b"}],
        },
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    files = sorted(
        p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()
    )
    info = type(
        "Info", (), {"siblings": [type("S", (), {"rfilename": f}) for f in files]}
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi, "dataset_info", lambda self, repo_id: info
    )
    asked = []

    def download(repo_id, *, allow_patterns, **kwargs):
        asked.append(allow_patterns)
        assert repo_id == "someone/big" and kwargs["repo_type"] == "dataset"
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    assert [r.fields for r in load_split("someone/big", "train")] == [{"text": "a"}]
    assert asked == [["README.md"], ["data/train-00000-of-00001.parquet"]]


# ---------------------------------------------------------------- errors


def test_a_dataset_not_in_the_cache_is_one_line(hub, tiny_model, tmp_path, capsys):
    hub("someone/other", {"train.jsonl": [{"text": "x"}]})
    argv = ["sft", "--model", str(tiny_model), "--data", "nobody/nothing:main"]
    code, lines = run_cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and len(lines) == 1
    assert re.fullmatch(
        r"error: nobody/nothing:main: no such local path, and the dataset is not in "
        r"the Hugging Face cache .*hf-cache \(HF_HUB_OFFLINE is set\)",
        lines[0],
    )


texts = st.sampled_from(["", " ", "Q: x", "Q: y", "Q: x A", "Q: x B"]) | st.text(
    max_size=8
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "user", "assistant", "tool", "x"]),
            "content": texts,
        }
    )
    | st.integers(),
    max_size=4,
)
values = texts | messages | st.none() | st.integers() | st.lists(texts, max_size=2)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.dictionaries(
            st.sampled_from(
                ["chosen", "rejected", "question", "answer", "messages", "label"]
            ),
            values,
            max_size=4,
        ),
        min_size=1,
        max_size=3,
    )
)
def test_reshaped_rows_raise_only_located_data_errors(rows, tokenizer):
    """No prompt field, odd values: only DataError, at the row, from the
    reshaping and from every loader after it."""
    convert = converter("", nulls=True)
    try:
        records = [
            Record("f", i, convert(row, "f", i)) for i, row in enumerate(rows, 1)
        ]
    except DataError as error:
        assert re.match(r"^f:[1-3]: \S", str(error)), str(error)
        return
    for load in (
        lambda: encode_pairs(tokenizer, records, 48, report=lambda _: None),
        lambda: encode_kto(tokenizer, records, 48, report=lambda _: None),
        lambda: [encode_sft_record(tokenizer, r) for r in records],
        lambda: check_prompt_records(records, [("answer", "solution")]),
        lambda: encode_prompts(tokenizer, records, report=lambda _: None),
    ):
        try:
            load()
        except DataError as error:
            assert re.match(r"^f(:[1-3])?: \S", str(error)), str(error)
