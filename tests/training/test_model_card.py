"""The benchmark section of model cards, from the do-no-harm check's rows."""

from mne_unfolded_sbl.training.export import benchmark_section, set_benchmark_section


def _row(setting, metric, diff, lo, hi, verdict, scale=1.0):
    return dict(setting=setting, metric=metric, n="40", diff_mean=str(diff / scale),
                ci_lo=str(lo / scale), ci_hi=str(hi / scale), verdict=verdict,
                setting_verdict="FAIL" if setting == "b" else "PASS")


def test_benchmark_section_and_replacement(tmp_path):
    rows = [_row("a", "rmse", -0.05, -0.08, -0.02, "PASS"),
            _row("a", "emd", -1.5, -2.0, -1.0, "PASS", scale=1e3),
            _row("b", "rmse", 0.04, 0.01, 0.07, "FAIL")]
    agg = [dict(metric="rmse", rel_change="-0.125", target="-0.2", target_met="0",
                settings_passed="1", settings_run="2"),
           dict(metric="all", baseline="deep-cb-joint", verdict="not met")]
    text = benchmark_section(rows, agg, "mne-unfolded-sbl benchmark --do-no-harm")
    assert "| a | 40 | -0.050 [-0.080, -0.020] PASS | -1.50 [-2.00, -1.00] PASS" \
        " | n/a | n/a | PASS |" in text
    assert "| b | 40 | +0.040 [+0.010, +0.070] FAIL |" in text
    assert "- rMSE: -12.5 % (target -20 %: not met); settings passed 1/2" in text
    # the comparison of Deep Attn CB with Deep CB: its verdict, not a metric
    assert "- against `deep-cb-joint` (the paired rule of the check, Deep CB " \
        "as the baseline): not met" in text and "settings passed /" not in text
    card = tmp_path / "card.md"
    card.write_text("# title\n\nbody\n\n## Benchmark\n\n_Not measured yet._\n")
    set_benchmark_section(card, text)
    out = card.read_text()
    assert out.startswith("# title\n\nbody\n\n## Benchmark")
    assert "Not measured yet" not in out and out.count("## Benchmark") == 1
