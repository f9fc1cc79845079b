"""The command line: end to end on the small checkpoints (conftest.py), every bad input ending in one
line and exit status 2, the --help text, and the --trace page (signals: test_faults.py)."""

import html
import html.parser
import json
import os
import re
import shutil
import sys

import pytest
import torch

import conftest
import entrgi

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL = ["--samples", "2", "--steps", "4", "--max-new-tokens", "8", "--device", "cpu"]


def lines(path):
    """An --output file's result lines and its summaries."""
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    return [r for r in records if "summary" not in r], [r["summary"] for r in records if "summary" in r]


def cli(*args, dream_dir, rm_dir, timeout=300):
    """The command line in a process of its own, within `timeout` seconds of an idle machine (conftest.Patience)."""
    cmd = [sys.executable, os.path.join(HERE, "entrgi.py"), "--dllm", dream_dir, "--reward-model", rm_dir, *args]
    return conftest.run(cmd, timeout, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_cli_end_to_end(dream_dir, rm_dir, tmp_path):
    out = tmp_path / "run.jsonl"
    p = cli("--prompt", "Write a poem about the sea", "--samples", "3", "--steps", "6", "--max-new-tokens", "8",
            "--device", "cpu", "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
    assert p.returncode == 0, p.stderr
    [result], [summary] = lines(out)
    R = [r["reward"] for r in result["responses"]]
    assert len(R) == 3 and result["method"] == "entrgi" and result["prompt"] == "Write a poem about the sea"
    assert result["top1_reward"] == max(R) and result["avg_reward"] == pytest.approx(sum(R) / 3)
    assert result["best_response"] == result["responses"][R.index(max(R))]["text"]
    assert result["settings"]["K"] == 3 and result["settings"]["T"] == 6 and result["settings"]["L"] == 8
    assert summary["table"]["entrgi"]["top1_reward"] == max(R) and summary["new_results"] == 1
    assert f"Top@1 {max(R):.4f}" in p.stderr and "Avg@3" in p.stdout and "trajectory 2: reward" in p.stdout
    assert "denoising" in p.stderr and "Traceback" not in p.stderr
    before = out.read_text()
    again = cli("--prompt", "Write a poem about the sea", "--samples", "3", "--steps", "6", "--max-new-tokens", "8",
                "--device", "cpu", "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
    assert again.returncode == 0 and out.read_text() == before             # a finished run again: the file as it was
    assert "1 result for 1 prompt, 0 new" in again.stdout


def test_cli_entropy_from_model_runs_and_is_recorded(dream_dir, rm_dir, tmp_path):
    runs = {}
    for source in ("sampling", "model"):
        out = tmp_path / f"{source}.jsonl"
        p = cli("--prompt", "Hello", *SMALL, "--entropy-from", source, "--output", str(out), dream_dir=dream_dir,
                rm_dir=rm_dir)
        assert p.returncode == 0, p.stderr
        [runs[source]], _ = lines(out)
        assert runs[source]["settings"]["entropy_from"] == source
    assert [r["text"] for r in runs["sampling"]["responses"]] != [r["text"] for r in runs["model"]["responses"]]


@pytest.fixture(scope="module")
def broken_dirs(dream_dir, rm_dir, tmp_path_factory):
    """A Dream checkpoint whose tokenizer has no mask token, a reward model without a chat template."""
    root = tmp_path_factory.mktemp("broken")
    no_mask, no_template = str(root / "no_mask"), str(root / "no_template")
    shutil.copytree(dream_dir, no_mask)
    shutil.copytree(rm_dir, no_template)
    template_file = os.path.join(no_template, "chat_template.jinja")   # where transformers 4.43 on saves it
    if os.path.exists(template_file):
        os.remove(template_file)
    with open(os.path.join(no_template, "tokenizer_config.json")) as f:
        tokenizer_config = json.load(f)
    tokenizer_config.pop("chat_template", None)                          # where older versions save it
    with open(os.path.join(no_template, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f)
    config_file = os.path.join(no_mask, "tokenizer_config.json")
    with open(config_file) as f:
        config = json.load(f)
    del config["mask_token"]
    added = config["added_tokens_decoder"]
    config["added_tokens_decoder"] = {k: v for k, v in added.items() if v["content"] != "<|mask|>"}
    with open(config_file, "w") as f:
        json.dump(config, f)
    return no_mask, no_template


BAD = [   # (arguments, what the one line says); all checked before any model is loaded but the last two
    (["--prompt", "  "], "--prompt: the prompt is empty"),
    (["--method", "greedy"], "argument --method: invalid choice: 'greedy'"),
    (["--remasking", "low_confidence"], "argument --remasking: invalid choice: 'low_confidence'"),
    (["--schedule", "cosine"], "argument --schedule: invalid choice: 'cosine'"),
    (["--device", "tpu"], "device 'tpu' is not supported"),
    (["--device", "meta"], "device 'meta' is not supported"),
    (["--dllm", "/nonexistent/dream"], "model '/nonexistent/dream': no such directory here"),
    (["--dllm", "./dreem"], "model './dreem': no such directory here, and not a hub name"),
    (["--reward-model", "no-such-org/no-such-model"], "the machine may be offline"),
    (["--max-new-tokens", "300", "--steps", "300"], "positions with L = 300, more than the dLLM's 256"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_cli_bad_input_exits_2(args, message, dream_dir, rm_dir, capsys):
    argv = ["--prompt", "Hello", "--dllm", dream_dir, "--reward-model", rm_dir, "--steps", "2",
            "--max-new-tokens", "4", "--device", "cpu", *args]
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]                      # loading may print progress bars before
    assert last.startswith("entrgi.py: error: ") and message in last and "Traceback" not in err


def test_cli_folders_named_as_outputs_exit_2_before_loading(dream_dir, rm_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(entrgi, "load_dllm", lambda *a: pytest.fail("a model was loaded"))
    for flag in ("--output", "--trace"):
        with pytest.raises(SystemExit) as exit_info:
            entrgi.main(["--prompt", "Hi", "--dllm", dream_dir, "--reward-model", rm_dir, *SMALL, flag, str(tmp_path)])
        assert exit_info.value.code == 2 and f"{flag} '{tmp_path}': it is a folder" in capsys.readouterr().err


def test_cli_bad_models_exit_2(broken_dirs, dream_dir, rm_dir, capsys):
    no_mask, no_template = broken_dirs
    for dllm_dir, reward_dir, message in ((no_mask, rm_dir, "has no mask token"),
                                          (dream_dir, no_template, "has no chat template"),
                                          (dream_dir, dream_dir, "(DreamModel) is not a sequence classifier"),
                                          (rm_dir, rm_dir, "is no Dream or LLaDA diffusion LM: its config.json has "
                                                           "model_type 'qwen3'")):
        with pytest.raises(SystemExit) as exit_info:
            entrgi.main(["--prompt", "Hello", "--dllm", dllm_dir, "--reward-model", reward_dir, "--device", "cpu"])
        assert exit_info.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("entrgi.py: error: ") and message in last


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_cuda_without_cuda_exits_2_without_traceback(dream_dir, rm_dir):
    p = cli("--prompt", "Hello", "--device", "cuda", dream_dir=dream_dir, rm_dir=rm_dir)
    assert p.returncode == 2
    assert "CUDA is not available here: use --device cpu" in p.stderr and "Traceback" not in p.stderr


# -----------------------------------------------------------------------------
# --trace: the denoising as a page


class Page(html.parser.HTMLParser):
    """The page's tags, the attributes that could load anything, and each trajectory's token spans."""

    def __init__(self, text):
        super().__init__()
        self.tags, self.loads, self.trajectories, self.best, self._span = [], [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self.loads += [(tag, k) for k in attrs if k in ("src", "href", "action", "srcset", "poster", "data")]
        if tag == "div" and "t" in attrs.get("class", "").split():
            self.trajectories.append([])
            self.best.append("best" in attrs["class"].split())
        if tag == "span" and "data-k" in attrs:
            self._span = {"step": int(attrs["data-k"]), "classes": attrs.get("class", "").split(), "text": ""}
            self.trajectories[-1].append(self._span)

    def handle_endtag(self, tag):
        self._span = None if tag == "span" else self._span

    def handle_data(self, data):
        if self._span is not None:
            self._span["text"] += data


PROMPT = "Hello <script>alert('x')</script> & <b>friends</b>"


@pytest.fixture(scope="module")
def traced(dream_dir, rm_dir, tmp_path_factory):
    """--method all with --trace, run twice with the same seed."""
    root = tmp_path_factory.mktemp("trace")
    pages = []
    for i in range(2):
        p = cli("--prompt", PROMPT, *SMALL, "--steps", "8", "--method", "all", "--trace", str(root / f"t{i}.html"),
                "--output", str(root / f"r{i}.jsonl"), dream_dir=dream_dir, rm_dir=rm_dir)
        assert p.returncode == 0, p.stderr
        pages.append((root / f"t{i}.html").read_text(encoding="utf-8"))
    return pages, lines(root / "r0.jsonl")[0]


def test_trace_page_ends_where_the_run_ends(traced):
    (page, _), run = traced
    parsed = Page(page)
    shown = sorted(run, key=lambda result: result["method"] != "entrgi")       # entrgi first, then as run
    responses = [r for result in shown for r in result["responses"]]
    assert [r["method"] for r in run] == list(entrgi.METHODS) and len(parsed.trajectories) == len(responses) == 8
    steps = [k for k, c in enumerate(entrgi.schedule(8, 8)) if c]
    assert f"const steps = {steps};" in page
    for spans, response in zip(parsed.trajectories, responses):
        assert len(spans) == 8 and all(s["step"] in steps for s in spans)            # every position revealed once
        assert "".join(s["text"] for s in spans if "e" not in s["classes"]) == response["text"]
    moved = sum("c" in s["classes"] for spans in parsed.trajectories[:2] for s in spans)
    assert moved > 0                                             # entrgi, shown first: guidance moved tokens


def test_trace_page_scores_each_method_and_marks_its_best_trajectory(traced):
    """Each method's heading carries its Top@1 and Avg@K; the trajectory R ranks first is marked;
    the settings are a list of names and values, not JSON; keys step and play."""
    (page, _), run = traced
    parsed = Page(page)
    shown = sorted(run, key=lambda result: result["method"] != "entrgi")
    for result in shown:
        assert (f"<h2>{result['method']}</h2><p class=\"score\">Top@1 <strong>{result['top1_reward']:.4f}"
                f"</strong> &middot; Avg@2 <strong>{result['avg_reward']:.4f}</strong>") in page
    best = [r["reward"] == max(x["reward"] for x in result["responses"])
            for result in shown for r in result["responses"]]
    assert parsed.best == best and sum(best) == len(run)
    assert '"K": ' not in page and "<dt>K</dt><dd>2</dd>" in page
    for key in ("ArrowLeft", "ArrowRight", "Home", "End", '" "'):
        assert key in page


def test_trace_page_escapes_text_loads_nothing_and_repeats(traced):
    (page, again), _ = traced
    assert page == again                                                       # the same seed, the same page
    parsed = Page(page)
    assert parsed.tags.count("script") == 1 and "b" not in parsed.tags      # the prompt's tags are text
    assert "<script>alert" not in page and "<b>" not in page and parsed.loads == []
    assert html.escape(PROMPT) in page
    assert not re.search(r"https?:|//[a-z]|url\(|@import|<link|<iframe|<img", page, re.I)


@pytest.mark.slow
def test_deterministic_and_compile_run_record_themselves_and_repeat(dream_dir, rm_dir, tmp_path):
    """--deterministic (torch's deterministic algorithms) runs on a CPU and gives the default run's tokens;
    --compile runs end to end; both are settings a resume checks."""
    texts = {}
    for name, flags in (("plain", []), ("deterministic", ["--deterministic"]), ("compiled", ["--compile"])):
        out = tmp_path / f"{name}.jsonl"
        p = cli("--prompt", "Hello", *SMALL, *flags, "--output", str(out), dream_dir=dream_dir, rm_dir=rm_dir)
        assert p.returncode == 0, p.stderr
        [result], _ = lines(out)
        texts[name] = [r["text"] for r in result["responses"]]
        assert result["settings"]["deterministic"] == (name == "deterministic")
        assert result["settings"]["compile"] == (name == "compiled")
    assert texts["deterministic"] == texts["plain"]
    assert len(texts["compiled"]) == 2


def test_help_shows_every_default_and_choice(capsys):
    with pytest.raises(SystemExit):
        entrgi.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("{bon,soft,aps,entrgi,all}", "(default: entrgi)", "(default: 128)", "(default: 0.95)",
                  "(default: Dream-org/Dream-v0-Instruct-7B)", "{entropy,probability,margin,random}",
                  "--samples SAMPLES K, trajectories per prompt, in [1, 65536] (default: 4)",
                  "--no-eos-last reveal a sampled end token like any other (without this flag it is revealed"):
        assert shown in text, shown
    for option in re.split(r" (?=--[a-z])", text.split("options:")[1]):      # each default said once
        assert option.count("(default") <= 1 and "(default: None)" not in option, option
        assert "(default: True)" not in option and "(default: False)" not in option, option


def test_a_run_says_where_it_is_and_a_resume_what_is_there(dream_dir, rm_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hello\nWhy?\nOne two three\n")
    out = tmp_path / "o.jsonl"
    args = ["--prompts-file", str(prompts), *SMALL, "--output", str(out)]
    p = cli(*args, "--dtype", "bfloat16", dream_dir=dream_dir, rm_dir=rm_dir)
    assert p.returncode == 0, p.stderr
    assert "(1 of 3)" in p.stderr and "(3 of 3)" in p.stderr and "s left" in p.stderr
    assert "--dtype bfloat16 on a CPU runs many times slower" in p.stderr
    assert "3 results for 3 prompts, 3 new" in p.stdout
    again = cli(*args, "--dtype", "bfloat16", dream_dir=dream_dir, rm_dir=rm_dir)
    assert "resuming: 3 results already in" in again.stderr and "3 results for 3 prompts, 0 new" in again.stdout


# -----------------------------------------------------------------------------
# the machine as it is: its memory, its cores, what --help says of it


def test_memory_a_run_needs_is_refused_before_any_weights_load(dream_dir, rm_dir, capsys, monkeypatch):
    """Where the device has less memory free than a run needs (its weights, E^R and the first step's (N, L, V)
    tensors), the run is refused in one line naming both figures, before any weight loads: the weights alone too
    large, or K x L too large beside them; a benchmark preset likewise, before any allocation."""
    monkeypatch.setattr(entrgi, "free_memory", lambda device: 5 * 2**20)            # 5 MiB free
    argv = ["--prompt", "Hello", "--dllm", dream_dir, "--reward-model", rm_dir, "--steps", "4", "--max-new-tokens",
            "6", "--device", "cpu"]
    entrgi.main([*argv, "--samples", "2"])                                          # it fits in 5 MiB
    monkeypatch.setattr(entrgi, "load_dllm", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main([*argv, "--samples", "200"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "the run needs at least 0.0" in last and "0.0 GiB free" in last, last
    assert "(N = 200 rows x L = 6)" in last and "lower --batch-size, --samples or --max-new-tokens" in last
    monkeypatch.setattr(entrgi, "free_memory", lambda device: 0)
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main([*argv, "--samples", "2"])                                      # the weights alone
    assert "the weights 0.0 GiB in float32" in capsys.readouterr().err.strip().splitlines()[-1]
    monkeypatch.setattr(entrgi, "free_memory", lambda device: 20 * 2**30)
    timed = []
    monkeypatch.setattr(entrgi, "benchmark", lambda *a, **k: timed.append(a) or pytest.skip("reached"))
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main(["--benchmark", "real", "--device", "cpu"])                    # float32 on a CPU: 35.9 GiB
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and "--benchmark real needs at least 35.9 GiB on cpu" in last, last
    assert "which has 20.0 GiB free" in last and "--benchmark-layers 2" in last and not timed
    with pytest.raises(pytest.skip.Exception):
        entrgi.main(["--benchmark", "real", "--benchmark-layers", "2", "--device", "cpu"])   # 8.5 GiB: it runs
    assert timed


@pytest.mark.parametrize("load, threads", [(0.0, None), (50.0, 1)])
def test_a_cpu_run_picks_its_threads_from_the_load_and_says_so(load, threads, dream_dir, rm_dir, capsys,
                                                               monkeypatch):
    """Without OMP_NUM_THREADS, a CPU run takes one thread per core that other work leaves free (at least one) and
    says so; with it, torch's own count stands, unsaid. other_work reads the processes running now."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(entrgi, "other_work", lambda: load)
    monkeypatch.setattr(entrgi, "run", lambda args: None)
    try:
        entrgi.main(["--prompt", "Hello", "--device", "cpu"])
        expected = threads or os.cpu_count()
        assert f"note: {expected} CPU thread" in capsys.readouterr().err and torch.get_num_threads() == expected
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        entrgi.main(["--prompt", "Hello", "--device", "cpu"])
        assert "CPU thread" not in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
    assert 0 <= entrgi.other_work() < 10_000


def test_help_names_every_environment_variable_and_the_presets_sizes(capsys):
    """--help lists each environment variable entrgi.py reads (each name found in the file's os.environ reads, or
    read through torch and the hub) and each benchmark preset with its weights' size, which equals the size counted
    on the meta device."""
    with pytest.raises(SystemExit):
        entrgi.main(["--help"])
    text = capsys.readouterr().out
    with open(entrgi.__file__, encoding="utf-8") as f:
        source = f.read()
    read = set(re.findall(r"os\.environ(?:\.get|\.setdefault)?[\[(]\"([A-Z_]+)\"", source))
    read |= {"OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HOME"}
    assert read >= {"ENTRGI_HUB_WAIT", "LOCAL_RANK", "WORLD_SIZE", "CUBLAS_WORKSPACE_CONFIG"}
    for name in read:
        assert name in text.split("environment variables read:")[1], name
    presets = text.split("benchmark presets")[1]
    for name in entrgi.PRESETS:
        line = next(line for line in presets.splitlines() if line.strip().startswith(name + " "))
        sizes = [entrgi.preset_weights(name, dtype) / 2**30 for dtype in (torch.bfloat16, torch.float32)]
        if name != "tiny":
            assert line.rstrip().endswith(f": {sizes[0]:.1f}, {sizes[1]:.1f}"), (line, sizes)
