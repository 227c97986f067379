"""Tests for rank_sweep.spectra: planted spectra, subspace similarity, a tiny PEFT BERT."""

import csv

import numpy as np
import pytest
import torch

from rank_sweep.analysis import plots, spectra


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- singular values


@pytest.mark.parametrize("d_out,d_in,r,scale", [(32, 32, 4, 2.0), (48, 20, 8, 0.5), (10, 64, 3, -1.5), (7, 9, 7, 1.0)])
def test_singular_values_match_dense_svd(d_out, d_in, r, scale):
    g = _gen(d_out + d_in + r)
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    s = spectra.update_singular_values(A, B, scale)
    ref = torch.linalg.svdvals(scale * B @ A)
    assert s.dtype == torch.float64 and s.shape == (r,)
    assert torch.all(s[:-1] >= s[1:])
    torch.testing.assert_close(s, ref[:r], rtol=0, atol=1e-8)
    assert torch.all(ref[r:] < 1e-10)  # the product has rank <= r


def test_singular_values_float32_factors_are_computed_in_float64():
    g = _gen(1)
    A, B = torch.randn(4, 16, generator=g), torch.randn(24, 4, generator=g)
    s = spectra.update_singular_values(A, B, 3.0)
    ref = torch.linalg.svdvals(3.0 * B.double() @ A.double())[:4]
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, ref, rtol=0, atol=1e-8)


def test_singular_values_reject_mismatched_factors():
    with pytest.raises(ValueError, match=r"\(3, 8\)"):
        spectra.update_singular_values(torch.zeros(3, 8), torch.zeros(8, 4), 1.0)


def test_planted_rank_two_update():
    # r = 8 but only two independent columns of B are non-zero: dW has rank 2.
    g = _gen(2)
    A = torch.randn(8, 40, generator=g, dtype=torch.float64)
    B = torch.zeros(30, 8, dtype=torch.float64)
    B[:, 0] = 5.0 * torch.randn(30, generator=g, dtype=torch.float64)
    B[:, 3] = 4.0 * torch.randn(30, generator=g, dtype=torch.float64)
    s = spectra.update_singular_values(A, B, 0.25)
    assert s.shape == (8,)
    assert s[1] > 1.0 and torch.all(s[2:] < 1e-10)
    assert spectra.effective_rank_energy(s, 0.9) == 2
    assert spectra.effective_rank_energy(s, 1.0) == 2
    torch.testing.assert_close(s, torch.linalg.svdvals(0.25 * B @ A)[:8], rtol=0, atol=1e-8)


def test_planted_dominant_direction():
    # A = rank-2 product with one dominant direction: energy rank 1 at 0.9, 2 at 0.999.
    g = _gen(3)
    u, _ = torch.linalg.qr(torch.randn(8, 2, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(50, 2, generator=g, dtype=torch.float64))
    A = u @ torch.diag(torch.tensor([10.0, 1.0], dtype=torch.float64)) @ v.T
    B, _ = torch.linalg.qr(torch.randn(50, 8, generator=g, dtype=torch.float64))  # orthonormal columns
    s = spectra.update_singular_values(A, B, 1.0)
    torch.testing.assert_close(s[:2], torch.tensor([10.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-8)
    assert spectra.effective_rank_energy(s, 0.9) == 1
    assert spectra.effective_rank_energy(s, 0.999) == 2
    assert spectra.top_energy_share(s) == pytest.approx(100.0 / 101.0)


# ---------------------------------------------------------------- scalar summaries


def test_entropy_rank_of_equal_values_is_their_count():
    assert spectra.effective_rank_entropy(torch.full((5,), 3.0)) == pytest.approx(5.0)
    assert spectra.effective_rank_entropy([2.0, 2.0, 2.0, 0.0, 0.0]) == pytest.approx(3.0)
    assert spectra.effective_rank_entropy([7.0]) == pytest.approx(1.0)
    assert spectra.effective_rank_energy([1.0, 1.0, 1.0, 1.0], 0.9) == 4
    assert spectra.effective_rank_energy([1.0, 1.0, 1.0, 1.0], 0.5) == 2
    assert spectra.top_energy_share([1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.25)


def test_entropy_rank_known_value():
    s = np.array([3.0, 1.0])
    p = s / s.sum()
    assert spectra.effective_rank_entropy(s) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert 1.0 < spectra.effective_rank_entropy(s) < 2.0


def test_zero_update_is_handled():
    s = spectra.update_singular_values(torch.randn(4, 12), torch.zeros(9, 4), 2.0)  # PEFT's B = 0 at init
    assert torch.all(s == 0)
    assert spectra.effective_rank_energy(s) == 0
    assert spectra.effective_rank_entropy(s) == 0.0
    assert spectra.top_energy_share(s) == 0.0


def test_summaries_validate_inputs():
    with pytest.raises(ValueError, match="energy"):
        spectra.effective_rank_energy([1.0], 0.0)
    with pytest.raises(ValueError, match="-1.0"):
        spectra.effective_rank_entropy([1.0, -1.0])
    with pytest.raises(ValueError, match="finite"):
        spectra.top_energy_share([float("nan")])


# ---------------------------------------------------------------- subspace similarity


def test_phi_of_a_subspace_with_itself_is_one():
    A = torch.randn(6, 40, generator=_gen(4))
    for i in range(1, 7):
        assert spectra.subspace_similarity(A, A, i, i) == pytest.approx(1.0, abs=1e-10)
    grid = spectra.similarity_grid(A, A)
    assert grid.shape == (6, 6)
    np.testing.assert_allclose(np.diagonal(grid), 1.0, atol=1e-10)
    assert spectra.reading(grid) == (6, pytest.approx(1.0))


def test_phi_of_orthogonal_subspaces_is_zero():
    g = _gen(5)
    A1 = torch.zeros(4, 30)
    A2 = torch.zeros(8, 30)
    A1[:, :10] = torch.randn(4, 10, generator=g)  # rows span coordinates 0..9
    A2[:, 10:] = torch.randn(8, 20, generator=g)  # rows span coordinates 10..29
    grid = spectra.similarity_grid(A1, A2)
    assert grid.shape == (4, 8)
    np.testing.assert_allclose(grid, 0.0, atol=1e-12)
    assert spectra.subspace_similarity(A1, A2, 4, 8) == pytest.approx(0.0, abs=1e-12)
    assert spectra.reading(grid) == (0, 0.0)


def test_phi_matches_direct_computation():
    g = _gen(6)
    A1 = torch.randn(5, 25, generator=g, dtype=torch.float64)
    A2 = torch.randn(9, 25, generator=g, dtype=torch.float64)
    V1 = torch.linalg.svd(A1).Vh  # rows: right-singular vectors, descending
    V2 = torch.linalg.svd(A2).Vh
    grid = spectra.similarity_grid(A1, A2)
    assert grid.shape == (5, 9)
    for i in range(1, 6):
        for j in range(1, 10):
            direct = (torch.linalg.matrix_norm(V1[:i] @ V2[:j].T) ** 2 / min(i, j)).item()
            assert grid[i - 1, j - 1] == pytest.approx(direct, abs=1e-10)
            if (i + j) % 4 == 0:
                assert spectra.subspace_similarity(A1, A2, i, j) == pytest.approx(direct, abs=1e-10)
    assert np.all((grid >= 0) & (grid <= 1))


def test_phi_shared_top_direction_then_noise():
    # Section 7 shape: a shared top direction, the rest unrelated.
    g = _gen(7)
    d = 200
    top = torch.randn(d, generator=g, dtype=torch.float64)
    A_low = torch.randn(4, d, generator=g, dtype=torch.float64)
    A_high = torch.randn(16, d, generator=g, dtype=torch.float64)
    A_low[0] += 30 * top
    A_high[0] += 30 * top
    grid = spectra.similarity_grid(A_low, A_high)
    assert grid[0, 0] > 0.9
    assert grid[3, 3] < 0.5
    k, phi = spectra.reading(grid, threshold=0.5)
    assert k in (1, 2) and phi == grid[k - 1, k - 1] and phi >= 0.5


def test_phi_validates_indices():
    A1, A2 = torch.randn(4, 20), torch.randn(8, 20)
    with pytest.raises(ValueError, match="i=0"):
        spectra.subspace_similarity(A1, A2, 0, 1)
    with pytest.raises(ValueError, match="i=5"):
        spectra.subspace_similarity(A1, A2, 5, 1)
    with pytest.raises(ValueError, match="j=9"):
        spectra.subspace_similarity(A1, A2, 1, 9)
    with pytest.raises(ValueError, match="d_in"):
        spectra.similarity_grid(A1, torch.randn(8, 21))


def test_reading_picks_largest_diagonal_hit():
    grid = np.array([[0.9, 0.9, 0.9], [0.5, 0.3, 0.4], [0.5, 0.4, 0.6]])
    assert spectra.reading(grid, 0.5) == (3, pytest.approx(0.6))
    assert spectra.reading(grid, 0.7) == (1, pytest.approx(0.9))
    with pytest.raises(ValueError, match="threshold"):
        spectra.reading(grid, 0.0)


def test_ladder_similarity_pairs_same_names():
    g = _gen(8)
    low = {"l.0.query": torch.randn(2, 16, generator=g), "l.0.value": torch.randn(2, 16, generator=g)}
    high = {"l.0.query": torch.cat([low["l.0.query"], torch.randn(6, 16, generator=g)]),
            "l.1.value": torch.randn(8, 16, generator=g)}
    grids = spectra.ladder_similarity(low, high)
    assert list(grids) == ["l.0.query"]
    assert grids["l.0.query"].shape == (2, 8)
    assert grids["l.0.query"][1, 7] == pytest.approx(1.0)  # span of low's rows lies inside high's rows
    with pytest.raises(ValueError, match="in common"):
        spectra.ladder_similarity({"a": low["l.0.value"]}, {"b": low["l.0.value"]})


def test_heatmap_png_written(tmp_path):
    g = _gen(9)
    grids = {f"layer {k}": spectra.similarity_grid(torch.randn(4, 32, generator=g), torch.randn(8, 32, generator=g))
             for k in range(3)}
    out = plots.plot_similarity_heatmap(grids, 4, 8, tmp_path / "sub" / "phi.png", title="r=4 vs r=8")
    data = out.read_bytes()
    assert out == tmp_path / "sub" / "phi.png"
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="expected"):
        plots.plot_similarity_heatmap(grids, 8, 4, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        plots.plot_similarity_heatmap({}, 4, 8, tmp_path / "none.png")


# ---------------------------------------------------------------- PEFT model


@pytest.fixture(scope="module")
def tiny_peft():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=100)
    model = transformers.BertForSequenceClassification(cfg)
    lcfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    pm = peft.get_peft_model(model, lcfg)
    g = _gen(10)
    with torch.no_grad():
        for module in pm.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                w = module.lora_B["default"].weight
                w.copy_(torch.randn(w.shape, generator=g))
    return pm


def _lora_layers(pm):
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if isinstance(m, LoraLayer)}


def test_adapter_spectra_on_tiny_bert(tiny_peft, tmp_path):
    rows = spectra.adapter_spectra(tiny_peft)
    layers = _lora_layers(tiny_peft)
    assert len(rows) == 4
    assert {(r["layer"], r["role"]) for r in rows} == {(0, "query"), (0, "value"), (1, "query"), (1, "value")}
    for row in rows:
        assert row["module"] in layers and row["module"].startswith("bert.encoder.layer.")
        assert (row["r"], row["d_in"], row["d_out"]) == (4, 32, 32)
        assert row["scale"] == pytest.approx(2.0)  # alpha / r
        layer = layers[row["module"]]
        delta = layer.get_delta_weight("default").detach().double()
        ref = torch.linalg.svdvals(delta)
        s = torch.tensor(row["singular_values"], dtype=torch.float64)
        assert s.shape == (4,) and s[0] > 0
        torch.testing.assert_close(s, ref[:4], rtol=1e-6, atol=1e-6)
        assert 1 <= row["effective_rank_90"] <= 4
        assert row["effective_rank_90"] == spectra.effective_rank_energy(ref[:4], 0.9)
        assert 1.0 <= row["effective_rank_entropy"] <= 4.0
        assert row["top_share"] == pytest.approx((ref[0] ** 2 / (ref**2).sum()).item(), rel=1e-6)

    metrics = spectra.summarize_spectra(rows)
    assert set(metrics) == {f"spectra/{role}/{m}" for role in ("query", "value")
                            for m in ("eff_rank90_mean", "eff_rank90_max", "eff_rank_entropy_mean", "top_share_mean")}
    q = [r for r in rows if r["role"] == "query"]
    assert metrics["spectra/query/eff_rank90_max"] == max(r["effective_rank_90"] for r in q)
    assert metrics["spectra/query/top_share_mean"] == pytest.approx(np.mean([r["top_share"] for r in q]))

    path = spectra.write_spectra_csv(rows, tmp_path / "spectra.csv")
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert [r["module"] for r in read] == [r["module"] for r in rows]
    back = [float(x) for x in read[0]["singular_values"].split(";")]
    assert back == rows[0]["singular_values"]
    assert int(read[0]["effective_rank_90"]) == rows[0]["effective_rank_90"]


def test_adapter_spectra_custom_role_and_unknown_adapter(tiny_peft):
    rows = spectra.adapter_spectra(tiny_peft, role_of=lambda n: "attn" if ".attention." in n else "other")
    assert {r["role"] for r in rows} == {"attn"}
    assert set(spectra.summarize_spectra(rows)) == {"spectra/attn/eff_rank90_mean", "spectra/attn/eff_rank90_max",
                                                    "spectra/attn/eff_rank_entropy_mean", "spectra/attn/top_share_mean"}
    with pytest.raises(ValueError, match="'nope'"):
        spectra.adapter_spectra(tiny_peft, adapter="nope")


def test_lora_A_factors_and_self_similarity(tiny_peft):
    factors = spectra.lora_A_factors(tiny_peft)
    layers = _lora_layers(tiny_peft)
    assert set(factors) == set(layers) and len(factors) == 4
    for name, a in factors.items():
        assert a.shape == (4, 32) and a.device.type == "cpu" and not a.requires_grad
        torch.testing.assert_close(a, layers[name].lora_A["default"].weight.detach())
    grids = spectra.ladder_similarity(factors, factors)
    for grid in grids.values():
        np.testing.assert_allclose(np.diagonal(grid), 1.0, atol=1e-6)
