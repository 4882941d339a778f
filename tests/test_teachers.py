"""Several teachers in one run (issue 30): each row is distilled from its own teacher, and only from it.

References: the reverse KL written out over full logits from each model's own forward, each row against the teacher
its column names; SEAD's zones of each teacher's tokens alone (:mod:`_naive_zones`); samplers that stamp their ids.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from _naive_zones import FKL, ref_zones
from _tiny import (
    FAST,
    completion_logits,
    fixed_batch,
    parity_reward,
    save_models,
    swapped_tokenizer,
    tiny_dataset,
    tiny_model,
    tokenizer,
    write_jsonl,
)
from sead.components.teachers import TEACHER_INDEX_KEY, RoutedRollouts, group_rows, parse_teachers, sub_batch
from sead.training.config import OPDConfig
from sead.training.trainer import OPDTrainer
from sead.utils.errors import SeadError


def _cfg(tmp_path, **kw):
    return OPDConfig(output_dir=str(tmp_path / "out"), **{**FAST, "max_steps": 2, **kw})


def _dataset(n=8, names=("a", "b")):
    ds = tiny_dataset(n)
    return ds.add_column("teacher", [names[i % len(names)] for i in range(n)])


def _flat_teacher(seed=2, scale=0.05):
    """A teacher whose next-token distributions are much flatter (higher entropy) than a random tiny model's."""
    model = tiny_model(seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def _trainer(tmp_path, teachers=None, dataset=None, **kw):
    teachers = teachers if teachers is not None else {"a": tiny_model(1), "b": tiny_model(2)}
    return OPDTrainer(tiny_model(0), teachers, args=_cfg(tmp_path, **kw), processing_class=tokenizer(),
                      train_dataset=dataset if dataset is not None else _dataset())  # fmt: skip


def _batch(index, seed=0, C=6):
    """:func:`fixed_batch` with each row's teacher."""
    return {**fixed_batch(seed, B=len(index), C=C), TEACHER_INDEX_KEY: torch.tensor(index)}


def _completion_logits(model, batch):
    return completion_logits(model, batch).double()


def _naive_rkl(student, teachers, batch):
    """sum over valid tokens of KL(p_S || p_T(row)) / valid tokens, each row's teacher by its index, written out."""
    s = _completion_logits(student, batch).log_softmax(-1)
    total = 0.0
    for b, i in enumerate(batch[TEACHER_INDEX_KEY].tolist()):
        with torch.no_grad():
            t = _completion_logits(teachers[i], {k: v[b : b + 1] for k, v in batch.items() if k != "num_items_in_batch"})
        t = t[0].log_softmax(-1)
        for j in range(batch["completion_ids"].shape[1]):
            if batch["completion_mask"][b, j]:
                total = total + (s[b, j].exp() * (s[b, j] - t[j])).sum()
    return total / batch["completion_mask"].sum()


def test_each_row_is_scored_by_its_own_teacher_loss_and_gradient(tmp_path):
    tr = _trainer(tmp_path, method="opd", estimator="full")
    batch = _batch([0, 1, 1, 0, 1])
    loss = tr._compute_loss(tr.model, dict(batch), batch["num_items_in_batch"].float())[0]
    grads = torch.autograd.grad(loss, list(tr.model.parameters()))
    student = tiny_model(0)
    ref = _naive_rkl(student, [tiny_model(1), tiny_model(2)], batch)
    ref_grads = torch.autograd.grad(ref, list(student.parameters()))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-4, atol=1e-7)
    # and it is not one teacher's loss: the same rows all scored by teacher a differ
    one = _naive_rkl(tiny_model(0), [tiny_model(1), tiny_model(1)], batch)
    assert abs(one.item() - loss.item()) > 1e-3


def test_evaluation_loss_without_a_count_is_the_whole_micro_batch_mean(tmp_path):
    tr = _trainer(tmp_path, method="opd", estimator="full")
    batch = _batch([1, 0, 1, 1])
    with torch.no_grad():
        loss = tr._compute_loss(tr.model, dict(batch), None)[0]
        ref = _naive_rkl(tiny_model(0), [tiny_model(1), tiny_model(2)], batch)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_a_teacher_without_rows_runs_no_forward(tmp_path):
    tr = _trainer(tmp_path, method="sead", curriculum=False, zone_precision="exact")
    calls = [0, 0]
    for i, teacher in enumerate(tr.teachers):
        teacher.model.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    batch = _batch([0, 0, 0, 0])
    tr._step_zone_cuts(batch)  # the step's zone pass
    tr._compute_loss(tr.model, sub_batch(batch, None), batch["num_items_in_batch"].float())
    assert calls[1] == 0 and calls[0] >= 1
    tr._step_zone_cuts(_batch([0, 1, 0, 0]))
    assert calls[1] == 1


def test_zone_cuts_are_per_teacher_as_the_naive_zones_of_its_tokens_alone(tmp_path):
    """Teacher b is much less sure than teacher a: pooled percentiles would put b's tokens in the FKL zone and a's
    nowhere; per teacher, each teacher's tokens split as SEAD splits one teacher's."""
    tr = _trainer(tmp_path, {"a": tiny_model(1), "b": _flat_teacher()}, method="sead", curriculum=False,
                  zone_precision="exact", zone_composition="paper")  # fmt: skip
    batch = _batch([0, 1, 0, 1, 0, 1], C=8)
    tr._step_zone_cuts(batch)
    spec = tr.spec.zones
    student = tiny_model(0)
    for i, teacher in enumerate((tiny_model(1), _flat_teacher())):
        rows = (batch[TEACHER_INDEX_KEY] == i).nonzero().flatten()
        part = sub_batch(batch, rows)
        with torch.no_grad():
            lt = _completion_logits(teacher, part).log_softmax(-1)
            ls = _completion_logits(student, part).log_softmax(-1)
        h_t = (-(lt.exp() * lt).sum(-1)).flatten().tolist()
        h_s = (-(ls.exp() * ls).sum(-1)).flatten().tolist()
        mask = part["completion_mask"].flatten().tolist()
        want = ref_zones(h_t, h_s, mask, spec.teacher_quantile, spec.skip_fraction)
        kept = batch["zone_entropies"][rows]  # the zone pass's own entropies, kept at each row
        torch.testing.assert_close(kept[..., 0].flatten().double()[torch.tensor(mask).bool()],
                                   torch.tensor(h_t).double()[torch.tensor(mask).bool()], rtol=1e-4, atol=1e-5)  # fmt: skip
        cuts = tr.zone_cuts.cuts_at(tr.state.global_step, i)
        got = [(-1 if not m else FKL if a >= cuts.teacher_entropy else 0 if b <= cuts.student_entropy_cut else 1)
               for a, b, m in zip(h_t, h_s, mask)]  # fmt: skip
        assert sum(g != w for g, w in zip(got, want)) <= 1, (i, got, want)  # at most a tie at the cut
        n_valid = sum(mask)
        assert want.count(FKL) <= math.ceil((1 - spec.teacher_quantile) * n_valid) + 1
    assert tr.zone_cuts.cuts_at(tr.state.global_step, 1).teacher_entropy > tr.zone_cuts.cuts_at(
        tr.state.global_step, 0).teacher_entropy  # fmt: skip


def test_routed_rollouts_come_from_each_prompts_own_teacher():
    G = 2

    def stamp(k):
        return lambda ids, mask, seed: [[k, int(p[0])] for p in ids for _ in range(G)]

    routed = RoutedRollouts([stamp(100), stamp(200), stamp(300)], G)
    ids = torch.tensor([[1], [2], [3], [4]])
    got = routed(ids, torch.ones_like(ids), 0, routes=torch.tensor([2, 0, 2, 1]))
    assert got == [[300, 1]] * 2 + [[100, 2]] * 2 + [[300, 3]] * 2 + [[200, 4]] * 2
    assert routed(ids[:1], torch.ones_like(ids[:1]), 0) == [[100, 1]] * 2  # no routes: the first teacher


def test_group_rows_and_sub_batch():
    groups = group_rows(torch.tensor([1, 0, 1, 3]), 4)
    assert [(i, r.tolist()) for i, r in groups] == [(0, [1]), (1, [0, 2]), (3, [3])]
    batch = {"completion_ids": torch.arange(8).reshape(4, 2), "x": torch.tensor(7), "y": "z"}
    part = sub_batch(batch, torch.tensor([0, 2]))
    assert part["completion_ids"].tolist() == [[0, 1], [4, 5]] and part["x"].item() == 7 and part["y"] == "z"


@pytest.mark.parametrize("method", ["opd", "sead", "sgopd"])
def test_two_teachers_train_every_method_and_log_per_teacher(tmp_path, method):
    extra = dict(curriculum=False) if method == "sead" else {}
    if method == "sgopd":
        extra = dict(teacher_mix_rho0=1.0, teacher_num_generations=2)
    tr = OPDTrainer(tiny_model(0), {"a": tiny_model(1), "b": tiny_model(2)},
                    args=_cfg(tmp_path, method=method, max_steps=2, **extra), train_dataset=_dataset(8),
                    processing_class=tokenizer(), reward_funcs=parity_reward)  # fmt: skip
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    tr.train()
    logs = {k for entry in tr.state.log_history for k in entry}
    for name in ("a", "b"):
        for key in ("loss", "token_share", "pass_rate"):
            assert f"teacher/{name}/{key}" in logs, (name, key, sorted(logs))
        if method == "sead":
            assert f"teacher/{name}/frac_skip" in logs and f"teacher/{name}/step_frac_skip" in logs
    assert any(not torch.equal(before[n], p) for n, p in tr.model.named_parameters())
    shares = [e["teacher/a/token_share"] + e["teacher/b/token_share"] for e in tr.state.log_history
              if "teacher/a/token_share" in e and "teacher/b/token_share" in e]  # fmt: skip
    assert shares and all(s <= 1.0 + 1e-6 for s in shares)


def test_each_teacher_loads_with_its_own_init_kwargs(tmp_path):
    student, teacher = save_models(tmp_path)
    cfg = _cfg(tmp_path, method="opd", teachers={"a": teacher, "b": {"model": teacher, "init_kwargs": {"dtype": "float64"}}})
    tr = OPDTrainer(student, None, args=cfg, train_dataset=_dataset(), processing_class=tokenizer())
    assert [next(t.parameters()).dtype for t in tr.teachers] == [torch.float32, torch.float64]
    assert tr.teacher_names == ["a", "b"]


def test_refusals_name_the_teacher_the_row_or_the_field(tmp_path):
    with pytest.raises(SeadError, match="row 1 .* names teacher 'c'"):
        _trainer(tmp_path, dataset=_dataset(4, names=("a", "c")))
    with pytest.raises(SeadError, match="column `teacher`"):
        _trainer(tmp_path, dataset=tiny_dataset(4))
    assert parse_teachers({"a": "x", "b": "http://127.0.0.1:8000"})[1].url == "http://127.0.0.1:8000"
    with pytest.raises(SeadError, match="teachers.b: expected"):
        parse_teachers({"a": "x", "b": {"path": "y"}})
    with pytest.raises(SeadError, match="both set"):
        OPDConfig(output_dir=str(tmp_path), teachers={"a": "x"}, teacher_model_name_or_path="y", **FAST)
    # a teacher with another tokenizer is refused by name
    student, teacher = save_models(tmp_path / "other", teacher_tokenizer=swapped_tokenizer())
    with pytest.raises(SeadError, match="teacher `odd`.*tokeniz"):
        OPDTrainer(student, None, args=_cfg(tmp_path, teachers={"ok": student, "odd": teacher}),
                   train_dataset=_dataset(4, names=("ok", "odd")), processing_class=tokenizer())  # fmt: skip


def test_teachers_from_the_command_line_as_json(tmp_path):
    cfg = OPDConfig(output_dir=str(tmp_path), teachers='{"math": "m", "code": {"model": "c"}}', **FAST)
    assert [e.name for e in parse_teachers(cfg.teachers)] == ["math", "code"]
    with pytest.raises(SeadError, match="teachers: not a JSON"):
        OPDConfig(output_dir=str(tmp_path), teachers="{math: m", **FAST)


def test_a_dataset_row_keeps_its_teacher_through_the_generation_batch(tmp_path):
    ds = Dataset.from_dict({"prompt": ["1+1=", "2+2=", "3+3=", "4+4="], "answer": ["2", "4", "6", "8"],
                            "teacher": ["b", "a", "b", "b"]})  # fmt: skip
    tr = _trainer(tmp_path, dataset=ds, method="opd")
    tr.model.train()
    out = tr._generate_and_score_completions([ds[i] for i in range(4)])
    assert out[TEACHER_INDEX_KEY].tolist() == [1, 0, 1, 1]


def test_sead_train_takes_several_teachers_from_a_recipe(tmp_path):
    """The YAML path end to end, in process: two teachers by path, a teacher column in the jsonl dataset."""
    import yaml

    from sead.commands.train import parse
    from sead.training.recipe import build_trainer

    student, teacher = save_models(tmp_path)
    rows = tiny_dataset(8).to_list()
    for i, row in enumerate(rows):
        row["teacher"] = "x" if i % 2 else "y"
    data = write_jsonl(rows, tmp_path / "train.jsonl")
    recipe = {**FAST, "report_to": "none", "model_name_or_path": student, "dataset_name": data, "method": "sead",
              "curriculum": False, "output_dir": str(tmp_path / "out"), "max_steps": 1,
              "teachers": {"x": teacher, "y": {"model": teacher, "init_kwargs": {"dtype": "float32"}}}}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    script, cfg = parse(["--config", str(tmp_path / "r.yaml")])
    tr = build_trainer(script, cfg, progress=False)
    assert tr.teacher_names == ["x", "y"] and len(tr.teachers) == 2
    tr.train()
    assert any("teacher/y/loss" in e for e in tr.state.log_history)
    # the same recipe with a built-in task as well: refused by name, not silently one of them
    script, cfg = parse(["--config", str(tmp_path / "r.yaml"), "--builtin_task", "sums", "--model_name_or_path", ""])
    with pytest.raises(SeadError, match="teachers: x, y"):
        build_trainer(script, cfg, progress=False)


def test_sead_plan_counts_every_local_teacher(tmp_path, capsys):
    """Two bf16 teachers (a 32B and a 7B OLMo-3) are held whole by every DDP process: their weights add up, by hand
    from the table's parameter counts; the teacher forward is the larger one's."""
    import json

    import yaml

    from sead.cli import main
    from sead.plan import lookup_model

    base = {"model_name_or_path": "allenai/Olmo-3-7B-Think-SFT", "dataset_name": "d.parquet", "output_dir": "o",
            "method": "opd", "bf16": True, "max_completion_length": 1024, "per_device_train_batch_size": 1}  # fmt: skip
    one = {**base, "teacher_model_name_or_path": "allenai/Olmo-3-32B-Think", "teacher_model_init_kwargs": {"dtype": "bfloat16"}}
    two = {**base, "teachers": {"math": {"model": "allenai/Olmo-3-32B-Think", "init_kwargs": {"dtype": "bfloat16"}},
                                "chat": {"model": "allenai/Olmo-3-7B-Instruct", "init_kwargs": {"dtype": "bfloat16"}}}}
    plans = []
    for name, recipe in (("one", one), ("two", two)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        assert main(["plan", "--config", str(tmp_path / f"{name}.yaml"), "--gpus", "8", "--json"]) == 0
        plans.append(json.loads(capsys.readouterr().out)["strategies"]["ddp"]["components"])
    n32 = lookup_model("allenai/Olmo-3-32B-Think").num_params
    n7 = lookup_model("allenai/Olmo-3-7B-Instruct").num_params
    assert plans[0]["teacher weights"] == n32 * 2
    assert plans[1]["teacher weights"] == n32 * 2 + n7 * 2
    assert plans[1]["teacher forward"] == plans[0]["teacher forward"]  # the 32B's, the larger


def test_the_demonstrations_table_shows_every_teacher_and_run():
    from sead.bench.teachers import teachers_markdown

    res = {"command": "sead bench teachers", "steps": 500, "seed": 0, "method": "opd", "wall_seconds": 600,
           "machine": {"cpu": "test cpu"}, "level_split": {"low": [1, 2], "high": [3, 4]},
           "teachers": {"low": {"accuracy": 0.5, "accuracy_by_level": {"1": 0.9, "2": 0.8, "3": 0.2, "4": 0.1}},
                        "high": {"accuracy": 0.6, "accuracy_by_level": {"1": 0.5, "2": 0.4, "3": 0.8, "4": 0.7}}},
           "student_start": {"accuracy": 0.3, "accuracy_by_level": {"1": 0.5, "2": 0.3, "3": 0.2, "4": 0.2}},
           "runs": {"both": {"accuracy": 0.555, "accuracy_by_level": {"1": 0.9, "2": 0.7, "3": 0.4, "4": 0.22},
                             "train_seconds": 321.4}}}  # fmt: skip
    text = teachers_markdown(res, "bench_teachers.png")
    assert text.rstrip().endswith("![several teachers](bench_teachers.png)")
    assert "| teacher `low` (trained on levels 1, 2) | 50.0 | 90.0 | 80.0 | 20.0 | 10.0 | - |" in text
    assert "| student after opd from both | 55.5 | 90.0 | 70.0 | 40.0 | 22.0 | 321 |" in text
    assert "`sead bench teachers` (500 steps, seed 0, test cpu; 10 minutes," in text


def test_the_readme_quotes_the_recorded_demonstration():
    import json

    from _tiny import REPO

    res = json.loads((REPO / "benchmarks" / "results" / "teachers.json").read_text())
    readme = (REPO / "README.md").read_text()
    runs = res["runs"]
    best = max(runs["low alone"]["accuracy"], runs["high alone"]["accuracy"])
    assert f"reaches **{100 * runs['both']['accuracy']:.1f}%**" in readme
    assert f"against {100 * best:.1f}% from the\n  better one alone and {100 * res['student_start']['accuracy']:.1f}%" in readme
    assert runs["both"]["accuracy"] > best  # the demonstration's claim, as recorded
    assert (REPO / "benchmarks" / "results" / "teachers.md").read_text().startswith("## Several teachers")


def test_a_served_teacher_among_several_gives_the_all_local_loss(tmp_path):
    """Teacher b served by a (fake) vLLM server, teacher a local: the same micro-batch's loss (top-k estimator, SEAD's
    zones and anneal) as with both local, and a training step runs with b's rows scored by the server."""
    from _teacher_server import FakeVLLM

    K = 8
    fields = dict(method="sead", curriculum=False, estimator="topk", estimator_top_k=K, entropy_top_k=K,
                  teacher_server_backoff=0.01, teacher_server_max_retries=1, teacher_server_startup_timeout=5)  # fmt: skip
    with FakeVLLM(tiny_model(2), tokenizer(), max_logprobs=K) as srv:
        mixed = OPDTrainer(tiny_model(0), {"a": tiny_model(1), "b": srv.url}, args=_cfg(tmp_path / "m", **fields),
                           train_dataset=_dataset(), processing_class=tokenizer())  # fmt: skip
        local = OPDTrainer(tiny_model(0), {"a": tiny_model(1), "b": tiny_model(2)}, args=_cfg(tmp_path / "l", **fields),
                           train_dataset=_dataset(), processing_class=tokenizer())  # fmt: skip
        assert mixed.teachers[1] is None and mixed.served_by[1] is not None
        batch = _batch([1, 0, 1, 1])
        before = srv.completions_requests
        a = mixed._compute_loss(mixed.model, dict(batch), batch["num_items_in_batch"].float())[0]
        b = local._compute_loss(local.model, dict(batch), batch["num_items_in_batch"].float())[0]
        assert srv.completions_requests > before  # b's rows went to the server
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
        mixed.train()
        assert any("teacher/b/loss" in e for e in mixed.state.log_history)
    with pytest.raises(SeadError, match="teachers.b: expected"):
        parse_teachers({"a": "x", "b": {"url": "http://h:1", "model": "y"}})
    assert parse_teachers({"b": {"url": "http://h:1", "served_model": "m"}})[0].served_model == "m"


def test_the_demonstrations_plot_is_a_png(tmp_path):
    import json

    from _tiny import REPO
    from sead.bench.teachers import plot_teachers

    res = json.loads((REPO / "benchmarks" / "results" / "teachers.json").read_text())
    png = plot_teachers(res, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
