"""Every flagfile under flags/ parses with its binary's flags and builds a valid config; the paper's carry SPEC values.

A flagfile is only read when a user runs it, so a renamed flag or a value the config rejects would otherwise be
found by the person who starts a 200-epoch run. One process per binary (each binary defines its own flags), forked
by tests/binaries.py.
"""

import glob
import json
import os
import tempfile

import pytest
from binaries import run_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Parses each flagfile given after the binary's module name and prints a few fields of the config it builds.
_PARSE = r"""
import dataclasses, importlib, json, sys
from absl import flags
binary = importlib.import_module(sys.argv[1])
required = json.loads(sys.argv[2])
out = {}
for path in sys.argv[3:]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["binary", "--flagfile=" + path, *required])
    cfg = dataclasses.asdict(binary.config_from_flags())
    out[path] = cfg
print("CONFIGS=" + json.dumps(out, default=str))
"""

BINARIES = {
    "pretrain": ("advss_tf.pretrain", ["--model_dir=/tmp/advss_flagfile_check"]),
    "finetune": ("advss_tf.finetune", ["--model_dir=/tmp/advss_flagfile_check"]),
    "evaluate": ("advss_tf.evaluate", ["--model=/tmp/advss_no_model", "--output_dir=/tmp/advss_flagfile_check"]),
}


def _configs(prefix):
    module, required = BINARIES[prefix]
    paths = sorted(glob.glob(os.path.join(REPO, "flags", "*", f"{prefix}*.flags")))
    assert paths, f"no {prefix} flagfiles"
    if prefix == "finetune":  # linear/partial freeze the backbone: they need an export (not read when parsing)
        required = [*required, "--pretrained=/tmp/advss_some_export"]
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "parse_flagfiles.py")
        with open(script, "w") as f:
            f.write(_PARSE)
        proc = run_script(script, module, json.dumps(required), *paths, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("CONFIGS=")][-1]
    configs = json.loads(line[len("CONFIGS=") :])
    return {os.path.relpath(p, REPO): c for p, c in configs.items()}


@pytest.fixture(scope="module")
def pretrain_configs():
    return _configs("pretrain")


CONTRASTIVE = ("acl", "dynacl")  # their settings: test_paper_contrastive_flagfiles_carry_their_code


def test_pretrain_flagfiles_build_configs_and_the_paper_ones_carry_the_spec(pretrain_configs):
    assert len(pretrain_configs) == 12
    for path, cfg in pretrain_configs.items():
        assert os.path.basename(path) == f"pretrain_{cfg['task']}.flags", path
        if path.startswith("flags/paper/") and cfg["task"] not in CONTRASTIVE:
            assert cfg["backbone"]["name"] == "resnet50v2" and cfg["data"]["source"] == "tfds", path
            assert cfg["adversarial"], path
            assert cfg["attack"]["eps"] == pytest.approx(8 / 255), path
            assert cfg["attack"]["step_size"] == pytest.approx(2 / 255), path
            assert cfg["attack"]["steps"] == 10, path
    paper = {c["task"]: c for p, c in pretrain_configs.items() if p.startswith("flags/paper/")}
    assert paper["jigsaw"]["jigsaw_permutations"] == 30 and paper["jigsaw"]["jigsaw_identity_prob"] == 0.1
    assert (paper["selfie"]["selfie_layers"], paper["selfie"]["selfie_heads"], paper["selfie"]["selfie_ff_dim"]) == (
        13,
        16,
        2048,
    )
    assert paper["ensemble"]["diversity_weight"] == 0.1
    assert paper["ensemble"]["optimizer"]["learning_rate"] == 0.001 and paper["ensemble"]["optimizer"]["nesterov"]


# The reference's fine-tuning recipe (finetune/main.py) and the RobustSSL benchmark's / DynACL++'s (flags/paper/).
REFERENCE_FINETUNE = ("full_adversarial", "partial_adversarial", "linear_adversarial", "end_to_end", "rotation_aux")
ROBUSTSSL = {  # name: (mode, objective, batch, epochs, lr, boundaries, weight decay, schedule)
    "slf": ("linear", "standard", 512, 25, 0.01, [10, 20], 2e-4, "step"),
    "alf": ("linear", "adversarial", 512, 25, 0.01, [10, 20], 2e-4, "step"),
    "aff": ("full", "trades", 128, 25, 0.1, [15, 20], 2e-4, "step"),
    "aff_acl": ("full", "trades", 128, 100, 0.1, [40, 60], 2e-4, "step"),
    "dynacl_lp": ("linear", "standard", 512, 10, 0.01, [], 1e-4, "constant"),
    "dynacl_aft": ("full", "trades", 512, 25, 0.1, [10, 20], 1e-4, "step"),
}


def test_finetune_flagfiles_build_configs_and_the_paper_ones_carry_the_recipe():
    configs = _configs("finetune")
    assert len(configs) == 17
    for name in REFERENCE_FINETUNE:
        path, cfg = f"flags/paper/finetune_{name}.flags", configs[f"flags/paper/finetune_{name}.flags"]
        opt = cfg["optimizer"]
        assert (cfg["batch_size"], cfg["epochs"], opt["learning_rate"], opt["momentum"]) == (128, 100, 0.1, 0.9)
        assert opt["weight_decay"] == 3e-4, path
        assert cfg["val_attack_steps"] == 20 and cfg["attack"]["steps"] == 10, path
    for name, (mode, objective, batch, epochs, lr, boundaries, wd, schedule) in ROBUSTSSL.items():
        path = f"flags/paper/finetune_{name}.flags"
        cfg, opt = configs[path], configs[path]["optimizer"]
        assert (cfg["mode"], cfg["objective"], cfg["batch_size"], cfg["epochs"]) == (mode, objective, batch, epochs), (
            path
        )
        assert (opt["learning_rate"], list(opt["boundaries_epochs"]), opt["weight_decay"]) == (lr, boundaries, wd), path
        assert (opt["schedule"], opt["decay_factor"], opt["warmup_steps"], opt["momentum"]) == (schedule, 0.1, 0, 0.9)
        assert not opt["nesterov"] and cfg["attack"]["eps"] == pytest.approx(8 / 255), path
        if objective != "standard":  # PGD-10 in inference mode (ALF's and TRADES' model.eval() while crafting)
            assert (cfg["attack"]["steps"], cfg["attack"]["bn"]) == (10, "eval"), path
        if objective == "trades":
            assert cfg["trades_beta"] == 6, path
    assert configs["flags/paper/finetune_dynacl_lp.flags"]["pseudo_labels"] == "kmeans"
    aft = configs["flags/paper/finetune_dynacl_aft.flags"]
    assert aft["pseudo_labels"] == "pretrained" and aft["restore_head"] and aft["kmeans_clusters"] == 10
    assert all(
        configs[f"flags/paper/finetune_{n}.flags"]["head_init"] == "zeros" for n in ROBUSTSSL if n != "dynacl_aft"
    )
    for name in ROBUSTSSL:  # each protocol has its smoke version, in the same mode with the same objective
        smoke = configs.get(f"flags/smoke/finetune_{name}.flags")
        if smoke is not None:
            paper = configs[f"flags/paper/finetune_{name}.flags"]
            assert (smoke["mode"], smoke["objective"], smoke["pseudo_labels"]) == (
                paper["mode"],
                paper["objective"],
                paper["pseudo_labels"],
            )
    assert sum(p.startswith("flags/smoke/") for p in configs) == 6


def test_evaluate_flagfiles_build_configs():
    configs = _configs("evaluate")
    assert len(configs) == 3
    robustssl = configs["flags/paper/evaluate_robustssl.flags"]
    assert robustssl["attacks"] == ["pgd20", "autoattack"] and robustssl["autoattack_version"] == "standard"
    assert robustssl["linf_epsilon"] == pytest.approx(8 / 255) and robustssl["max_examples"] == 0
    paper = configs["flags/paper/evaluate.flags"]
    assert paper["linf_epsilon"] == pytest.approx(8 / 255) and paper["max_examples"] == 0
    assert [int(s) for s in paper["severities"]] == [1, 2, 3, 4, 5]
    assert {"pgd20", "fgsm", "pgd100", "pgd20_eps16", "pgd_l2", "cw_linf", "apgd_ce", "apgd_dlr", "autoattack"} == set(
        paper["attacks"]
    )


# SPEC §5's table (the reference's latest revision; the README command's batch where it overrides the script's).
SPEC_PRETRAIN = {  # task: (batch, epochs, weight decay, lr, nesterov, warm-up steps)
    "rotation": (128, 100, 3e-4, 0.1, False, 200),
    "jigsaw": (128, 100, 3e-4, 0.1, False, 200),
    "selfie": (128, 200, 1e-4, 0.1, True, 0),
    "ensemble": (32, 150, 1e-4, 0.001, True, 0),
}
README_BATCH = {"rotation": "-b 128", "ensemble": "--batch_size 32"}  # the README command, not the script default
SOURCE_WORDS = (".py", "README", "advss_tf setting", "the paper's", "Hendrycks et al.")


def _flag_sources(path) -> dict[str, str]:
    """flag line → the comment line right above it, for every flag of a paper flagfile."""
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    return {
        line: (lines[i - 1] if i and lines[i - 1].startswith("#") else "")
        for i, line in enumerate(lines)
        if line.startswith("--")
    }


def test_paper_pretrain_flagfiles_carry_the_latest_revision_and_say_where_each_value_comes_from(pretrain_configs):
    paper = {c["task"]: (p, c) for p, c in pretrain_configs.items() if p.startswith("flags/paper/")}
    assert sorted(paper) == sorted([*SPEC_PRETRAIN, *CONTRASTIVE])
    for task, (batch, epochs, wd, lr, nesterov, warmup) in SPEC_PRETRAIN.items():
        path, cfg = paper[task]
        opt = cfg["optimizer"]
        got = (cfg["batch_size"], cfg["epochs"], opt["weight_decay"], opt["learning_rate"], opt["nesterov"])
        assert got == (batch, epochs, wd, lr, nesterov) and opt["warmup_steps"] == warmup, path
        sources = _flag_sources(path)
        assert (README_BATCH.get(task) or "default") in sources[f"--batch_size={batch}"], path


def test_paper_contrastive_flagfiles_carry_their_code(pretrain_configs):
    """ACL's and DynACL's settings (docs/contrastive.md): 1000 epochs, batch 512, LARS 5.0 / 0.9 / 1e-6 / 1e-3 with a
    10-epoch warm-up, τ 0.5, contrastive PGD-5 at 8/255 step 2/255 in inference mode, the post-activation ResNet-18."""
    paper = {c["task"]: c for p, c in pretrain_configs.items() if p.startswith("flags/paper/")}
    for task, schedule in (("acl", "warmup_cosine"), ("dynacl", "warmup_cosine_epochs")):
        cfg, opt = paper[task], paper[task]["optimizer"]
        assert (cfg["epochs"], cfg["batch_size"], cfg["backbone"]["name"]) == (1000, 512, "resnet18_post"), task
        got = (opt["optimizer"], opt["learning_rate"], opt["momentum"], opt["weight_decay"], opt["trust_coefficient"])
        assert got == ("lars", 5.0, 0.9, 1e-6, 1e-3), task
        assert (opt["schedule"], opt["warmup_epochs"], opt["warmup_steps"], opt["final_lr"]) == (schedule, 10, 0, 1e-6)
        assert cfg["attack"]["eps"] == pytest.approx(8 / 255) and cfg["attack"]["step_size"] == pytest.approx(2 / 255)
        assert (cfg["attack"]["steps"], cfg["attack"]["bn"], cfg["contrastive"]["temperature"]) == (5, "eval", 0.5)
    dynacl = paper["dynacl"]["contrastive"]
    assert (dynacl["dynacl_period"], dynacl["dynacl_encoder_momentum"]) == (50, 0.99)
    assert dynacl["dynacl_swap_param"] == pytest.approx(2 / 3) and not dynacl["air"]


def test_every_paper_flag_says_where_its_value_comes_from():
    paths = sorted(
        glob.glob(os.path.join(REPO, "flags", "paper", "p*.flags"))
        + glob.glob(os.path.join(REPO, "flags", "paper", "f*.flags"))
    )
    assert len(paths) == 17
    for path in paths:
        for flag, source in _flag_sources(path).items():
            assert any(w in source for w in SOURCE_WORDS), f"{os.path.basename(path)}: {flag} has no source comment"


def test_the_acl_step_benchmark_builds_the_paper_flagfiles_step(pretrain_configs, monkeypatch):
    """tools/benchmark_acl_step.py times `build_step("acl", ..., **acl_paper_fields())` (tools/pretrain_step.py) as
    "the pretrain binary's ACL step": its attack, optimizer and contrastive settings are the paper flagfile's."""
    import dataclasses
    import importlib.util
    import sys

    from advss_tf.config import AttackConfig

    path = os.path.join(REPO, "tools", "pretrain_step.py")
    spec = importlib.util.spec_from_file_location("pretrain_step", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    fields = module.acl_paper_fields()
    paper = pretrain_configs["flags/paper/pretrain_acl.flags"]

    def as_json(config):  # as the parse script wrote the flagfile's config (tuples become lists)
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))

    assert as_json(AttackConfig(steps=paper["attack"]["steps"], bn=fields["attack_bn"])) == paper["attack"]
    assert as_json(fields["optimizer"]) == paper["optimizer"]
    assert as_json(fields["contrastive"]) == paper["contrastive"]
