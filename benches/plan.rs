//! Planning and index-set enumeration benchmarks (std only, no harness).
//!
//! Run with `cargo bench --bench plan`. Every figure is the median over repeated runs:
//! - planning F34 and Plain110 in forward mode, end to end (parse + lower + unify +
//!   analyze + plan build) and split into its front end (parse + lower + unify) and
//!   its back end (analyze + plan build on an already-unified network);
//! - enumerating every `s(ℓ,i)` of F34's layer 1 (`for_each_s` and the `s_set`
//!   iterator) and every `j(ℓ,i)` of its layer 2, in connections per second, each
//!   checked against the closed-form `ε_ℓ` (`ConvGeometry::connections`).
//!
//! Environment: `CNNC_BENCH_PLAN_RUNS` (default 200) and `CNNC_BENCH_ENUM_RUNS`
//! (default 5) change the number of runs.

use cnnc::analyze::{Mode, Options};
use cnnc::index::ConvGeometry;
use cnnc::unify::Network;
use cnnc::Source;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn runs(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(default)
}

/// Times `f` `n` times (after one warm-up call) and returns the sorted durations.
fn measure<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    black_box(f());
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    times
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn fmt_time(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn load(spec: &str) -> Source {
    let path = format!("{}/specs/{spec}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    Source::new(format!("specs/{spec}"), text)
}

const FORWARD: Options = Options { mode: Mode::Forward, std_cap: None };

fn plan_rows(name: &str, src: &Source, n: usize) {
    let net = src.network().expect("spec compiles");
    let layers = net.layers.len();
    let rows: [(&str, Vec<Duration>); 3] = [
        ("parse+lower+unify+analyze+plan", measure(n, || cnnc::plan(&src.network().unwrap(), FORWARD).unwrap())),
        ("parse+lower+unify", measure(n, || src.network().unwrap())),
        ("analyze+plan (unified net)", measure(n, || cnnc::plan(&net, FORWARD).unwrap())),
    ];
    for (what, t) in rows {
        println!(
            "{:<12} {:>3} {:<32} {:>11} {:>11} {:>11} {:>5}",
            name,
            layers,
            what,
            fmt_time(median(&t)),
            fmt_time(t[0]),
            fmt_time(t[t.len() - 1]),
            t.len()
        );
    }
}

/// Sums every enumerated index into a black-boxed accumulator; returns (count, sum).
type Enumerate = fn(&ConvGeometry) -> (u64, u64);

fn all_for_each_s(g: &ConvGeometry) -> (u64, u64) {
    let (mut count, mut acc) = (0u64, 0u64);
    for unit in 0..g.m_out() {
        g.for_each_s(unit, |input, tap| {
            count += 1;
            acc = acc.wrapping_add(input).wrapping_add(tap);
        });
        acc = black_box(acc);
    }
    (count, acc)
}

fn all_s_set(g: &ConvGeometry) -> (u64, u64) {
    let (mut count, mut acc) = (0u64, 0u64);
    for unit in 0..g.m_out() {
        for c in g.s_set(unit) {
            count += 1;
            acc = acc.wrapping_add(c.input).wrapping_add(c.tap);
        }
        acc = black_box(acc);
    }
    (count, acc)
}

fn all_j_set(g: &ConvGeometry) -> (u64, u64) {
    let (mut count, mut acc) = (0u64, 0u64);
    for unit in 0..g.m_in() {
        for c in g.j_set(unit) {
            count += 1;
            acc = acc.wrapping_add(c.output).wrapping_add(c.weight);
        }
        acc = black_box(acc);
    }
    (count, acc)
}

fn enum_row(net: &Network, layer: usize, what: &str, f: Enumerate, n: usize) -> u64 {
    let g = black_box(net.layers[layer - 1].weight.geometry);
    let expected = g.connections().expect("no overflow");
    let mut result = (0, 0);
    let t = measure(n, || {
        result = f(&g);
    });
    assert_eq!(result.0 as u128, expected, "{what} of layer {layer}: enumerated count differs from ε");
    let med = median(&t);
    println!(
        "{:<12} {:>3} {:<32} {:>11} {:>11} {:>8.3} G/s {:>5}",
        net.name,
        layer,
        what,
        result.0,
        fmt_time(med),
        result.0 as f64 / med.as_secs_f64() / 1e9,
        t.len()
    );
    result.1
}

fn main() {
    // `cargo bench` passes `--bench`; accept and ignore harness-style arguments.
    let plan_runs = runs("CNNC_BENCH_PLAN_RUNS", 200);
    let enum_runs = runs("CNNC_BENCH_ENUM_RUNS", 5);

    let f34 = load("f34.cnn");
    let plain110 = load("plain110.cnn");

    println!("Planning, forward mode (median/min/max over {plan_runs} runs, after one warm-up)");
    println!("{:<12} {:>3} {:<32} {:>11} {:>11} {:>11} {:>5}", "network", "L", "stage", "median", "min", "max", "runs");
    println!("{}", "-".repeat(91));
    plan_rows("F34", &f34, plan_runs);
    plan_rows("Plain110", &plain110, plan_runs);

    println!();
    println!("Index-set enumeration (median over {enum_runs} runs, after one warm-up; count checked against ε)");
    println!(
        "{:<12} {:>3} {:<32} {:>11} {:>11} {:>12} {:>5}",
        "network", "ℓ", "enumeration", "connections", "median", "throughput", "runs"
    );
    println!("{}", "-".repeat(92));
    let net = f34.network().expect("F34 compiles");
    let mut check = 0u64;
    check ^= enum_row(&net, 1, "s(ℓ,i) for_each_s", all_for_each_s, enum_runs);
    check ^= enum_row(&net, 1, "s(ℓ,i) s_set iterator", all_s_set, enum_runs);
    check ^= enum_row(&net, 2, "s(ℓ,i) for_each_s", all_for_each_s, enum_runs);
    check ^= enum_row(&net, 2, "s(ℓ,i) s_set iterator", all_s_set, enum_runs);
    check ^= enum_row(&net, 2, "j(ℓ,i) j_set iterator", all_j_set, enum_runs);
    black_box(check);
}
