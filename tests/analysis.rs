//! The analysis: τ and γ against independent values, the paper's limit cases, the
//! reference code's conventions, and the predicted variances of a plan.

use cnnc::analyze::{self, constants, max_second_moment_halves, Mode, Options, PoolingKind};
use cnnc::ir::Activation;
use cnnc::Source;

fn spec(name: &str) -> cnnc::unify::Network {
    let path = format!("{}/specs/{name}.cnn", env!("CARGO_MANIFEST_DIR"));
    Source::new(&path, std::fs::read_to_string(&path).unwrap()).network().unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

/// (T, positive half, negative half) from tests/data/analysis/maxpool_tau.txt (mpmath, 40 digits).
fn reference_tau() -> Vec<(u64, f64, f64)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/analysis/maxpool_tau.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let v: Vec<&str> = l.split_whitespace().collect();
            (v[0].parse().unwrap(), v[1].parse().unwrap(), v[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn max_pool_tau_matches_high_precision_values() {
    let table = reference_tau();
    assert!(table.len() >= 20);
    for (t, pos, neg) in table {
        let (got_pos, got_neg) = max_second_moment_halves(t);
        assert!(rel(got_pos, pos) < 1e-10, "T={t}: {got_pos} vs {pos}");
        // The negative half underflows for large T (1e-314 at T = 1024); compare where it is a normal number.
        if neg > 1e-300 {
            assert!(rel(got_neg, neg) < 1e-10, "T={t}: negative half {got_neg} vs {neg}");
        }
        let (tau, gamma) = constants(Activation::Relu, PoolingKind::Max(t)).unwrap();
        assert_eq!(tau, got_pos);
        let tf = t as f64;
        let want_gamma = (1.0 - 0.5f64.powf(tf)) / tf; // (2^T − 1)/(T 2^T) without overflow
        assert!(rel(gamma, want_gamma) < 1e-14, "γ at T={t}");
        // Leaky ReLU: τ = positive half + a² · negative half.
        let (leaky, _) = constants(Activation::LeakyRelu { slope: 0.3 }, PoolingKind::Max(t)).unwrap();
        assert!(rel(leaky, pos + 0.09 * neg) < 1e-10, "leaky τ at T={t}");
    }
}

#[test]
fn max_pool_tau_grows_with_the_window_and_avg_tau_shrinks() {
    let mut last_max = 0.0;
    let mut last_avg = f64::INFINITY;
    for t in 1..=64 {
        let (tm, gm) = constants(Activation::Relu, PoolingKind::Max(t)).unwrap();
        let (ta, ga) = constants(Activation::Relu, PoolingKind::Avg(t)).unwrap();
        assert!(tm > last_max && ta < last_avg, "T={t}");
        assert!(gm <= 0.5 && ga <= 0.5);
        last_max = tm;
        last_avg = ta;
    }
}

fn net(text: &str) -> cnnc::unify::Network {
    Source::new("t.cnn", text).network().unwrap_or_else(|e| panic!("{e}"))
}

/// The paper's limit: no padding, no pooling, k×k×d kernels after a ReLU ⇒ Kaiming.
#[test]
fn no_padding_no_pooling_reduces_to_kaiming() {
    let n = net("network K\ninput 3x40x40\nconv(3) -> 16, relu\nconv(3) -> 32, relu\nconv(5/s2) -> 8, relu\nconv(1) -> 4, relu\n");
    let fwd = analyze::analyze(&n, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let kin = analyze::analyze(&n, Options { mode: Mode::KaimingIn, std_cap: None }).unwrap();
    // Forward, ℓ ≥ 2 (the input is not rectified, so layer 1 gets 1/(k²d)): exactly 2/(k²d).
    for (k, d, l) in [(3u64, 16u64, 1usize), (5, 32, 2), (1, 8, 3)] {
        let want = 2.0 / (k * k * d) as f64;
        assert!(rel(fwd[l].variance, want) < 1e-14, "layer {}: {} vs {want}", l + 1, fwd[l].variance);
        assert!(rel(kin[l].variance, want) < 1e-14);
    }
    assert!(rel(fwd[0].variance, 1.0 / 27.0) < 1e-14);
    // Backward: σ² = M/(γ ε) = 2/(k² d') · (H W)/(H' W'): Kaiming fan-out exactly when
    // the conv keeps the spatial size (1×1 here), and in the limit of large inputs.
    let bwd = analyze::analyze(&n, Options { mode: Mode::Backward, std_cap: None }).unwrap();
    assert!(rel(bwd[3].variance, 2.0 / 4.0) < 1e-14, "1×1 conv, d' = 4");
    let (h, h2) = (38.0f64, 36.0f64); // layer 2: 3×3 valid conv 38 → 36, d' = 32
    assert!(rel(bwd[1].variance, 2.0 / (9.0 * 32.0) * (h * h) / (h2 * h2)) < 1e-14);
    let big = net("network K\ninput 8x4000x4000\nconv(3) -> 8, relu\nconv(3) -> 16, relu\n");
    let b = analyze::analyze(&big, Options { mode: Mode::Backward, std_cap: None }).unwrap();
    assert!(rel(b[1].variance, 2.0 / (9.0 * 16.0)) < 2e-3);
}

#[test]
fn f34_is_table_3() {
    let n = spec("f34");
    assert_eq!(n.layers.len(), 34);
    let params: u64 = n.layers.iter().map(|l| l.weight.parameters()).sum();
    assert_eq!(params, 21_108_362);
    let shapes: Vec<String> = n.layers.iter().map(|l| l.output.to_string()).collect();
    assert_eq!(shapes[0], "(64,56,56)");
    assert_eq!(shapes[7], "(128,28,28)");
    assert_eq!(shapes[15], "(256,14,14)");
    assert_eq!(shapes[27], "(512,7,7)");
    assert_eq!(shapes[32], "(512)");
    assert_eq!(shapes[33], "(10)");
}

/// ε_ℓ counted from scratch: per axis, the taps of every output position that land
/// inside the input (not in the padding), times the channel pairs a group connects.
fn counted_connections(layer: &cnnc::unify::Layer) -> f64 {
    let g = &layer.weight.geometry;
    let taps = |a: &cnnc::index::Axis| -> u64 {
        let mut n = 0;
        for o in 0..a.output {
            for k in 0..a.kernel {
                let at = (o * a.stride + k * a.dilation) as i64 - a.pad_begin as i64;
                n += u64::from(at >= 0 && (at as u64) < a.input);
            }
        }
        n
    };
    ((g.in_channels / g.groups) * g.out_channels * taps(&g.h) * taps(&g.w)) as f64
}

/// τ_ℓ = E[z²]/q and γ_ℓ for a layer of these specs, from closed forms and the mpmath
/// table, for u ~ N(0, q): ReLU alone 1/2 and 1/2; max pooling over T the table's τ(T)
/// and (1 − 2⁻ᵀ)/T; average pooling of T independent ReLUs (1/2 + (T − 1)/(2π))/T (the
/// variance of the mean plus its squared mean) and 1/(2T²); no activation 1 and 1.
fn written_out_constants(layer: &cnnc::unify::Layer, table: &[(u64, f64, f64)]) -> (f64, f64) {
    use cnnc::ir::PoolKind;
    let pool = layer.pooling.as_ref().map(|p| (p.kind, p.geometry.h.kernel * p.geometry.w.kernel));
    match (layer.activation, pool) {
        (Activation::Relu, None) => (0.5, 0.5),
        (Activation::Identity, None) => (1.0, 1.0),
        (Activation::Relu, Some((PoolKind::Max, t))) => {
            let tau = table.iter().find(|r| r.0 == t).unwrap_or_else(|| panic!("T = {t} is not in the table")).1;
            (tau, (1.0 - 0.5f64.powi(t as i32)) / t as f64)
        }
        (Activation::Relu, Some((PoolKind::Avg, t))) => {
            let t = t as f64;
            ((0.5 + (t - 1.0) / (2.0 * std::f64::consts::PI)) / t, 0.5 / (t * t))
        }
        other => panic!("layer {}: {other:?} is not written out here", layer.index),
    }
}

/// The paper's propagation, recomputed from the plan's σ and the counts and constants
/// above: q^(ℓ) = σ_ℓ² ε_ℓ τ_{ℓ-1} q^(ℓ-1) / M'_ℓ from a unit-variance input, and
/// r^(ℓ-1) = σ_ℓ² ε_ℓ γ_ℓ r^(ℓ) / M_{ℓ-1} from r^(L) = 1.
fn recomputed_q_and_r(net: &cnnc::unify::Network, plan: &cnnc::plan::Plan, table: &[(u64, f64, f64)]) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(net.layers.len(), plan.layers.len());
    let eps: Vec<f64> = net.layers.iter().map(counted_connections).collect();
    let constants: Vec<(f64, f64)> = net.layers.iter().map(|l| written_out_constants(l, table)).collect();
    let var: Vec<f64> = plan.layers.iter().map(|l| l.weight.std * l.weight.std).collect();
    let mut q = Vec::new();
    let mut z2 = 1.0; // E[z^(0)²]
    for (k, layer) in net.layers.iter().enumerate() {
        q.push(var[k] * eps[k] * z2 / layer.conv_output.numel() as f64);
        z2 = q[k] * constants[k].0;
    }
    let mut r = vec![0.0; net.layers.len()];
    let mut grad = 1.0; // r^(L)
    for (k, layer) in net.layers.iter().enumerate().rev() {
        grad *= var[k] * eps[k] * constants[k].1 / layer.input.numel() as f64;
        r[k] = grad;
    }
    (q, r)
}

/// A forward plan's σ gives q = 1 at every conv output and a backward plan's r = 1 at
/// every layer input, recomputed from scratch (counts, constants, propagation) rather
/// than read back from the analysis that chose σ; and the analysis' own predictions,
/// in every mode, are that recomputation.
#[test]
fn plans_keep_the_variance_they_promise() {
    let table = reference_tau();
    for name in ["f34", "f50", "vgg16", "plain110"] {
        let n = spec(name);
        for mode in Mode::ALL {
            let opts = Options { mode, std_cap: None };
            let plan = cnnc::plan(&n, opts).unwrap();
            let (q, r) = recomputed_q_and_r(&n, &plan, &table);
            let a = analyze::analyze(&n, opts).unwrap();
            for k in 0..q.len() {
                let at = format!("{name} {} layer {}", mode.name(), k + 1);
                assert!(rel(a[k].forward_variance, q[k]) < 1e-9, "{at}: predicted q {} vs recomputed {}", a[k].forward_variance, q[k]);
                assert!(rel(a[k].backward_variance, r[k]) < 1e-9, "{at}: predicted r {} vs recomputed {}", a[k].backward_variance, r[k]);
                if mode == Mode::Forward {
                    assert!(rel(q[k], 1.0) < 1e-9, "{at}: q = {}", q[k]);
                }
                if mode == Mode::Backward {
                    assert!(rel(r[k], 1.0) < 1e-9, "{at}: r = {}", r[k]);
                }
            }
        }
    }
    // DESIGN.md: on 28×28 inputs F34's last stage runs 3×3 convs on 1×1 maps, where only
    // the centre tap reads real data; Kaiming then predicts q ≈ 1e-10 at the logits,
    // and the forward plan still gives 1.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/f34.cnn")).unwrap().replace("3x224x224", "3x28x28");
    let small = net(&text);
    let kaiming = cnnc::plan(&small, Options { mode: Mode::KaimingIn, std_cap: None }).unwrap();
    let q = *recomputed_q_and_r(&small, &kaiming, &table).0.last().unwrap();
    assert!((1e-11..1e-9).contains(&q), "Kaiming on 28×28 predicts q = {q:e} at the logits");
    let forward = cnnc::plan(&small, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    let (q, _) = recomputed_q_and_r(&small, &forward, &table);
    assert!(q.iter().all(|q| rel(*q, 1.0) < 1e-9), "{q:?}");
}

/// The reference code's conventions, re-derived independently in Python
/// (tests/data/reference/asv_conventions.py): with its default cap of 3 the plans agree
/// to rounding, for every mode, on F34 and F50.
#[test]
fn matches_the_reference_conventions() {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reference/asv_conventions.json")).unwrap(),
    )
    .unwrap();
    for name in ["f34", "f50"] {
        let n = spec(name);
        let r = &json[name];
        for mode in Mode::ALL {
            let cap = matches!(mode, Mode::Forward | Mode::Backward).then_some(3.0);
            let plan = cnnc::plan(&n, Options { mode, std_cap: cap }).unwrap();
            let want = r[mode.name()].as_array().unwrap();
            assert_eq!(want.len(), plan.layers.len());
            for (k, (l, w)) in plan.layers.iter().zip(want).enumerate() {
                let w = w.as_f64().unwrap();
                assert!(rel(l.weight.std, w) < 1e-12, "{name} {} layer {}: {} vs {w}", mode.name(), k + 1, l.weight.std);
                assert_eq!(l.weight.name, r["names"][k].as_str().unwrap());
                assert_eq!(l.connections, r["connections"][k].as_u64().unwrap());
            }
        }
    }
}

#[test]
fn the_cap_bites_where_it_should_and_says_so() {
    let n = spec("f34");
    let free = cnnc::plan(&n, Options { mode: Mode::Backward, std_cap: None }).unwrap();
    let capped = cnnc::plan(&n, Options { mode: Mode::Backward, std_cap: Some(1.05) }).unwrap();
    for (a, b) in free.layers.iter().zip(&capped.layers) {
        // The cap is relative to sqrt(M/(ε/2)); γ < 1/2 (pooling) makes σ exceed it.
        let he = (b.m_in as f64 / (0.5 * b.connections as f64)).sqrt();
        if a.weight.std > 1.05 * he {
            assert!(b.capped && rel(b.weight.std, 1.05 * he) < 1e-14 && b.uncapped_std == a.weight.std, "layer {}", a.index);
        } else {
            assert!(!b.capped && b.weight.std == a.weight.std, "layer {}", a.index);
        }
    }
    assert_eq!(capped.summary.capped_layers, capped.layers.iter().filter(|l| l.capped).count() as u64);
    assert!(capped.layers[0].capped, "max pooling after layer 1 (γ ≈ 0.11) needs σ above the cap");
}
