"""The authors' second reward: a causal LM's mean log-likelihood of the response (--reward loglik), on the test
models (conftest.py: a random Qwen3ForCausalLM with a chat template), against independent computations."""

import json

import pytest
import torch

import entrgi

PROMPTS = ["Write a poem about the sea", "Hello"]


@pytest.fixture(scope="module")
def models(dream_dir, lm_dir):
    (dllm, tok), (lm, lm_tok) = entrgi.load_dllm(dream_dir), entrgi.load_reward_model(lm_dir, reward="loglik")
    vocab = entrgi.vocab_map(tok, lm_tok, dllm.config.vocab_size, verbose=False)[0]
    return dllm, tok, lm, lm_tok, vocab


def by_the_definition(lm, lm_tok, prompt, e, tokens, end_ids, vocab, relaxed):
    """R of one row, as the definition reads, without a cache: the whole chat [prefix | the response up to and
    with its first end token | suffix] through the LM, the hidden positions dropped; each target's log-probability
    from the position before it; a masked position's target soft + sg(w (hard - soft)), soft = sum_i sg(q_i)
    lp[map[i]] over the dLLM's vocabulary, hard = lp[map[x]]."""
    idx, q, x, w = relaxed
    E = lm.get_input_embeddings().weight
    prefix, suffix = (torch.tensor(ids[0]) for ids in entrgi.rm_slots(lm_tok, [prompt]))
    ends = [l for l, t in enumerate(tokens.tolist()) if t in end_ids]
    read = list(range(ends[0] + 1 if ends else len(tokens)))
    chat = torch.cat([E[prefix], e[read], E[suffix]])[None]
    lp = torch.log_softmax(lm(inputs_embeds=chat).logits[0].float(), -1)
    targets = [vocab[tokens[l]] for l in read] + suffix.tolist()
    masked = idx.tolist()
    total = 0
    for j, target in enumerate(targets):
        row = lp[len(prefix) + j - 1]
        if j < len(read) and read[j] in masked:
            at = masked.index(read[j])
            soft = (q[at] * row[vocab]).sum()
            hard = soft if x is None else row[vocab[x[at]]]
            total = total + soft + (w[at] * (hard - soft)).detach()
        else:
            total = total + row[target]
    return total / len(targets)


@pytest.mark.parametrize("method", ["soft", "aps", "entrgi"])
def test_the_loglik_reward_is_its_definition_in_value_and_gradient(method, models):
    """make_loglik_reward (its prefix's keys and values computed once, the rows past each end hidden by the
    attention mask, the targets weighted over the LM's vocabulary) against `by_the_definition`, row by row:
    2 prompts x K = 2 rows of L = 10, ending at 2, 6, nowhere and 0, 4 masked positions each, the gradient
    in psi through the relaxation."""
    dllm, tok, lm, lm_tok, vocab = models
    K, L, m = 2, 10, 4
    g = torch.Generator().manual_seed(0)
    end = entrgi.end_ids(tok)
    y = torch.randint(0, 250, (4, L), generator=g)
    for row, at in ((0, 2), (1, 6), (3, 0)):
        y[row, at] = end[0]
    idx = torch.stack([torch.randperm(L, generator=g)[:m] for _ in range(4)])
    psi = torch.randn(4, m, dllm.config.vocab_size, generator=g).requires_grad_(True)
    embedding = lm.get_input_embeddings().weight[vocab]
    e_m, q, x, w = entrgi.relax(psi, embedding, method, 0.7, 0.95, torch.Generator().manual_seed(1))
    tokens = y.scatter(1, idx, psi.detach().argmax(-1))
    e = embedding[y].scatter(1, idx.unsqueeze(-1).expand(-1, -1, embedding.shape[1]), e_m)
    reward = entrgi.make_loglik_reward(lm, *entrgi.rm_slots(lm_tok, PROMPTS), K, end, vocab)
    relaxed = (idx, q.detach(), x, w)
    R = reward(e, tokens, relaxed)
    grad, = torch.autograd.grad(R.sum(), psi, retain_graph=True)
    for row in range(4):
        parts = [p[row] if p is not None else None for p in relaxed]
        R_def = by_the_definition(lm, lm_tok, PROMPTS[row // K], e[row], tokens[row], end, vocab, parts)
        grad_def, = torch.autograd.grad(R_def, psi, retain_graph=True)
        torch.testing.assert_close(R[row], R_def, rtol=0, atol=1e-5)
        torch.testing.assert_close(grad[row], grad_def[row], rtol=0, atol=1e-6)
        assert (grad_def[[r for r in range(4) if r != row]] == 0).all()           # each row its own
    assert R.std() > 0.05 and (R < 0).all() and grad.abs().sum() > 0
    if method == "soft":
        assert x is None and (w == 0).all()


def test_the_text_reward_is_the_mean_log_likelihood_of_the_reply_and_the_suffix(models):
    """loglik_texts against the whole chat tokenized at once (the same ids here) and read by the LM's own forward:
    the mean log-probability of every token after the prefix."""
    _, _, lm, lm_tok, _ = models
    responses = ["The sea is calm and blue.", "Numbers: one two three", "ok"]
    R = entrgi.loglik_texts(lm, lm_tok, PROMPTS[:1] * 3, responses)
    for r, response in zip(R, responses):
        prefix, suffix = (ids[0] for ids in entrgi.rm_slots(lm_tok, PROMPTS[:1]))
        whole = lm_tok(entrgi.rm_chat(lm_tok, PROMPTS[0], response), add_special_tokens=False)["input_ids"]
        assert whole[:len(prefix)] == prefix and whole[len(whole) - len(suffix):] == suffix
        lp = torch.log_softmax(lm(input_ids=torch.tensor([whole])).logits[0].float(), -1)
        expected = sum(lp[j - 1, whole[j]] for j in range(len(prefix), len(whole))) / (len(whole) - len(prefix))
        torch.testing.assert_close(r, expected.detach(), rtol=0, atol=1e-5)
    assert R.max() - R.min() > 0.1


def test_guidance_raises_the_log_likelihood(models):
    """EntRGi with the log-likelihood reward against unguided sampling from the same seeds: 10 seed pairs x 2
    prompts x K = 4 trajectories each, each scored by the LM's mean log-likelihood of its tokens (the reward on
    the final tokens, nothing masked). Measured: a gain of 6.9 with a standard error of 0.25 over the seed pairs;
    the margins asserted, 2.0 and 5 standard errors, lie far below it. (On text the test models' byte-level
    gibberish does not survive decoding, U+FFFD in place of split characters: the text score is checked against
    its definition above.)"""
    dllm, tok, lm, lm_tok, vocab = models
    K, L = 4, 8
    eos = entrgi.end_ids(tok)
    embedding = lm.get_input_embeddings().weight[vocab]
    denoiser = entrgi.make_denoiser(dllm, [entrgi.dllm_prompt_ids(tok, p) for p in PROMPTS], K, L)
    reward = entrgi.make_loglik_reward(lm, *entrgi.rm_slots(lm_tok, PROMPTS), K, eos, vocab)
    none = (torch.zeros(2 * K, 0, dtype=torch.long), torch.zeros(2 * K, 0, dllm.config.vocab_size), None,
            torch.zeros(2 * K, 0))
    gains = []
    for s in range(10):
        mean = {}
        for method in ("bon", "entrgi"):
            cfg = entrgi.Config(method=method, K=K, T=L, L=L, lr=0.5)
            y, _ = entrgi.sample(denoiser, reward, embedding, [100 * s, 100 * s + 1], tok.mask_token_id, eos, cfg)
            with torch.no_grad():
                mean[method] = reward(embedding[y], y, none).mean().item()
        gains.append(mean["entrgi"] - mean["bon"])
    gain = sum(gains) / len(gains)
    se = (sum((x - gain) ** 2 for x in gains) / (len(gains) - 1) / len(gains)) ** 0.5
    assert gain > 2.0 and gain > 5 * se, (gain, se, gains)


def test_the_command_line_guides_by_the_log_likelihood_and_says_so(dream_dir, lm_dir, judge_dir, tmp_path, capsys):
    """--reward loglik end to end, every method, a judge beside it: each result's rewards are the LM's mean
    log-likelihoods of its texts; the result lines, the summary, the printed table and the page say which reward
    scored them."""
    out, page = tmp_path / "o.jsonl", tmp_path / "t.html"
    entrgi.main(["--dllm", dream_dir, "--reward", "loglik", "--reward-model", lm_dir, "--score-model", judge_dir,
                 "--prompt", "Hello", "--method", "all", "--samples", "2", "--steps", "4", "--max-new-tokens", "6",
                 "--device", "cpu", "--output", str(out), "--trace", str(page)])
    records = [json.loads(line) for line in out.read_text().splitlines()]
    results, summary = records[:-1], records[-1]["summary"]
    lm, lm_tok = entrgi.load_reward_model(lm_dir, reward="loglik")
    assert [r["method"] for r in results] == list(entrgi.METHODS)
    for r in results:
        texts = [x["text"] for x in r["responses"]]
        expected = entrgi.loglik_texts(lm, lm_tok, ["Hello"] * 2, texts).tolist()
        assert [x["reward"] for x in r["responses"]] == pytest.approx(expected, abs=1e-5)
        assert r["top1_reward"] == pytest.approx(max(expected), abs=1e-5) and all(x < 0 for x in expected)
        assert r["settings"]["reward"] == "loglik" and "score" in r["responses"][0]            # the judge's
    assert summary["settings"]["reward"] == "loglik" and set(summary["table"]) == set(entrgi.METHODS)
    assert "scored by the causal LM's mean log-likelihood" in capsys.readouterr().out
    assert "Scored by:</strong> the causal LM&#x27;s mean log-likelihood" in page.read_text()


@pytest.mark.parametrize("flags, which, message", [
    ([], "lm", "is a causal LM: pass --reward loglik to guide by its log-likelihood"),
    (["--reward", "loglik"], "rm", "is a sequence classifier: pass --reward score to guide by its score"),
    (["--reward", "loglik", "--score-model"], "lm", "--score-model"),
])
def test_a_reward_model_of_the_other_kind_is_refused_naming_the_flag(flags, which, message, dream_dir, rm_dir,
                                                                     lm_dir, capsys, monkeypatch):
    monkeypatch.setattr(entrgi, "load_dllm", lambda *a, **k: pytest.fail("weights were loaded"))
    folder = {"lm": lm_dir, "rm": rm_dir}[which]
    models = ["--reward-model", lm_dir, *flags, folder] if "--score-model" in flags else \
        [*flags, "--reward-model", folder]
    with pytest.raises(SystemExit) as exit_info:
        entrgi.main(["--dllm", dream_dir, *models, "--prompt", "Hello", "--device", "cpu"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last.startswith("entrgi.py: error: ") and message in last, last
    if "--score-model" in flags:
        assert "(Qwen3ForCausalLM) is not a sequence classifier" in last
