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

/// A forward plan predicts q = 1 at every conv output; a backward plan predicts r = 1
/// at every layer input; Kaiming does neither once padding and pooling are present.
#[test]
fn plans_keep_the_variance_they_promise() {
    for name in ["f34", "f50", "vgg16", "plain110"] {
        let n = spec(name);
        let f = analyze::analyze(&n, Options { mode: Mode::Forward, std_cap: None }).unwrap();
        assert!(f.iter().all(|a| rel(a.forward_variance, 1.0) < 1e-12), "{name} forward");
        let b = analyze::analyze(&n, Options { mode: Mode::Backward, std_cap: None }).unwrap();
        assert!(b.iter().all(|a| rel(a.backward_variance, 1.0) < 1e-12), "{name} backward");
    }
    // DESIGN.md: on 28×28 inputs F34's last stage runs 3×3 convs on 1×1 maps, where only
    // the centre tap reads real data; Kaiming then predicts q ≈ 1e-10 at the logits.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/f34.cnn")).unwrap().replace("3x224x224", "3x28x28");
    let small = net(&text);
    let k = analyze::analyze(&small, Options { mode: Mode::KaimingIn, std_cap: None }).unwrap();
    let q = k.last().unwrap().forward_variance;
    assert!((1e-11..1e-9).contains(&q), "Kaiming on 28×28 predicts q = {q:e} at the logits");
    let f = analyze::analyze(&small, Options { mode: Mode::Forward, std_cap: None }).unwrap();
    assert!(rel(f.last().unwrap().forward_variance, 1.0) < 1e-12);
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
