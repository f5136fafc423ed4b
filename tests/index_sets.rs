//! Index sets: closed-form counts against plain enumeration, and the backward sets
//! against the transpose of the forward ones, on 400 random valid geometries each
//! (proptest; invalid draws are discarded and drawn again, and each test asserts that
//! all 400 cases ran).

use cnnc::index::{Axis, ConvGeometry, PoolAxis, PoolGeometry};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

/// The naive reference: loop over every (output, tap) pair and keep those in range.
fn naive_s(g: &ConvGeometry, unit: u64) -> Vec<(u64, u64)> {
    let hw = g.h.output * g.w.output;
    let (co, oy, ox) = (unit / hw, unit % hw / g.w.output, unit % g.w.output);
    let cin_per = g.in_channels / g.groups;
    let group = co / (g.out_channels / g.groups);
    let mut out = Vec::new();
    for cl in 0..cin_per {
        for ky in 0..g.h.kernel {
            for kx in 0..g.w.kernel {
                let iy = (oy * g.h.stride + ky * g.h.dilation) as i64 - g.h.pad_begin as i64;
                let ix = (ox * g.w.stride + kx * g.w.dilation) as i64 - g.w.pad_begin as i64;
                if iy >= 0 && ix >= 0 && (iy as u64) < g.h.input && (ix as u64) < g.w.input {
                    let cin = group * cin_per + cl;
                    let input = (cin * g.h.input + iy as u64) * g.w.input + ix as u64;
                    let tap = (cl * g.h.kernel + ky) * g.w.kernel + kx;
                    out.push((input, tap));
                }
            }
        }
    }
    out
}

fn axis(input: u64, kernel: u64, stride: u64, pad_begin: u64, pad_end: u64, dilation: u64) -> Option<Axis> {
    let output = cnnc::ir::conv_out_size(input, kernel, stride, cnnc::ir::Pad { begin: pad_begin, end: pad_end }, dilation)?;
    Some(Axis { input, output, kernel, stride, pad_begin, dilation })
}

/// Only valid axes: a draw whose dilated kernel does not fit the padded input is
/// discarded and drawn again, so every case checks a geometry.
fn arb_axis() -> impl Strategy<Value = Axis> {
    (1u64..12, 1u64..6, 1u64..4, 0u64..4, 0u64..4, 1u64..4)
        .prop_filter_map("the dilated kernel is larger than the padded input", |(input, kernel, stride, pb, pe, dilation)| {
            axis(input, kernel, stride, pb, pe, dilation)
        })
}

prop_compose! {
    fn arb_conv()(h in arb_axis(), w in arb_axis(), groups in 1u64..4, cin_per in 1u64..4, cout_per in 1u64..4) -> ConvGeometry {
        ConvGeometry { in_channels: groups * cin_per, out_channels: groups * cout_per, groups, h, w }
    }
}

/// Only valid poolings: the window fits the padded input on both axes.
fn arb_pool() -> impl Strategy<Value = PoolGeometry> {
    (1u64..12, 1u64..12, 1u64..5, 1u64..4, 0u64..3, any::<bool>(), 1u64..3).prop_filter_map(
        "the window is larger than the padded input",
        |(input_h, input_w, kernel, stride, pad, ceil, channels)| {
            let pad = pad.min(kernel / 2);
            let p = cnnc::ir::Pad { begin: pad, end: pad };
            let oh = cnnc::ir::pool_out_size(input_h, kernel, stride, p, ceil)?;
            let ow = cnnc::ir::pool_out_size(input_w, kernel, stride, p, ceil)?;
            Some(PoolGeometry {
                channels,
                h: PoolAxis { input: input_h, output: oh, kernel, stride, pad_begin: pad },
                w: PoolAxis { input: input_w, output: ow, kernel, stride, pad_begin: pad },
            })
        },
    )
}

const CASES: u32 = 400;

/// Runs `check` on `CASES` geometries drawn from `strategy` (shrinking a failure as
/// `proptest!` does, after the seeds saved in `index_sets.proptest-regressions`, if any)
/// and asserts that at least `CASES` of them were checked.
fn run_cases<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let config = ProptestConfig { cases: CASES, source_file: Some(file!()), ..ProptestConfig::default() };
    let checked = AtomicU32::new(0);
    let result = TestRunner::new(config).run(&strategy, |g| {
        checked.fetch_add(1, Ordering::Relaxed);
        check(g)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let checked = checked.into_inner();
    eprintln!("{name}: {checked} geometries checked");
    assert!(checked >= CASES, "{name}: {checked} geometries checked, fewer than the {CASES} cases");
}

#[test]
fn s_matches_naive_enumeration_and_closed_forms() {
    run_cases("s_matches_naive_enumeration_and_closed_forms", arb_conv(), |g| {
        let mut total = 0u128;
        for unit in 0..g.m_out() {
            let want = naive_s(&g, unit);
            let got: Vec<(u64, u64)> = g.s_set(unit).map(|c| (c.input, c.tap)).collect();
            prop_assert_eq!(&got, &want, "unit {}", unit);
            let mut visited = Vec::new();
            g.for_each_s(unit, |i, a| visited.push((i, a)));
            prop_assert_eq!(&visited, &want);
            prop_assert_eq!(g.s_len(unit), want.len() as u64);
            prop_assert!(g.c(unit) < g.out_channels);
            total += want.len() as u128;
        }
        prop_assert_eq!(g.connections(), Some(total));
        Ok(())
    });
}

#[test]
fn j_is_the_transpose_of_s() {
    run_cases("j_is_the_transpose_of_s", arb_conv(), |g| {
        let per_out = g.taps_per_kernel();
        // (output, input, weight) triples seen from both sides.
        let mut forward = BTreeSet::new();
        for unit in 0..g.m_out() {
            let co = g.c(unit);
            for c in g.s_set(unit) {
                prop_assert!(forward.insert((unit, c.input, co * per_out + c.tap)));
            }
        }
        let mut backward = BTreeSet::new();
        let mut sum_j = 0u128;
        for unit in 0..g.m_in() {
            let mut n = 0;
            for b in g.j_set(unit) {
                prop_assert!(backward.insert((b.output, unit, b.weight)));
                n += 1;
            }
            prop_assert_eq!(g.j_len(unit), n);
            sum_j += n as u128;
        }
        prop_assert_eq!(&forward, &backward);
        prop_assert_eq!(Some(sum_j), g.connections(), "Σ|s| = Σ|j| = ε");
        Ok(())
    });
}

#[test]
fn pooling_t_and_d_are_transposes() {
    run_cases("pooling_t_and_d_are_transposes", arb_pool(), |g| {
        let (kernel, stride, pad) = (g.h.kernel, g.h.stride, g.h.pad_begin);
        let (input_h, input_w, oh, ow) = (g.h.input, g.w.input, g.h.output, g.w.output);
        let mut forward = BTreeSet::new();
        for unit in 0..g.m_out() {
            let t: Vec<u64> = g.t_set(unit).collect();
            prop_assert!(!t.is_empty(), "every window holds at least one element of v");
            prop_assert!(t.len() as u64 <= g.window_size());
            // Naive: every position of the window, kept when inside the input.
            let hw = oh * ow;
            let (c, oy, ox) = (unit / hw, unit % hw / ow, unit % ow);
            let mut naive = Vec::new();
            for ky in 0..kernel {
                for kx in 0..kernel {
                    let y = (oy * stride + ky) as i64 - pad as i64;
                    let x = (ox * stride + kx) as i64 - pad as i64;
                    if y >= 0 && x >= 0 && (y as u64) < input_h && (x as u64) < input_w {
                        naive.push((c * input_h + y as u64) * input_w + x as u64);
                    }
                }
            }
            prop_assert_eq!(&t, &naive);
            for v in t {
                forward.insert((unit, v));
            }
        }
        let mut backward = BTreeSet::new();
        for v in 0..g.m_in() {
            for unit in g.d_set(v) {
                backward.insert((unit, v));
            }
        }
        prop_assert_eq!(forward, backward);
        Ok(())
    });
}

#[test]
fn f34_first_layer_has_the_documented_connection_count() {
    let src = cnnc::Source::new("f34.cnn", std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/specs/f34.cnn")).unwrap());
    let net = src.network().unwrap();
    let g = &net.layers[0].weight.geometry;
    // 3 input channels × 64 output channels × 778² (per axis: 4 + 6 + 109·7 + 5 taps).
    assert_eq!(g.h.connections(), 778);
    assert_eq!(g.connections(), Some(3 * 64 * 778 * 778));
    // Corner unit 0 of layer 2 (3×3/p1 on 56×56, 64 channels) reads a 2×2 patch per channel.
    let g2 = &net.layers[1].weight.geometry;
    assert_eq!(g2.s_len(0), 64 * 4);
    // Interior unit: the full 3×3×64 kernel.
    assert_eq!(g2.s_len(56 + 1), 64 * 9);
}

#[test]
fn linear_layers_read_every_input() {
    let src = cnnc::Source::new("mlp.cnn", "network M\ninput 2x3x4\nlinear -> 5\n");
    let net = src.network().unwrap();
    let g = &net.layers[0].weight.geometry;
    assert_eq!(g.connections(), Some(24 * 5));
    for unit in 0..5 {
        let s: Vec<u64> = g.s_set(unit).map(|c| c.input).collect();
        assert_eq!(s, (0..24).collect::<Vec<_>>());
        let a: Vec<u64> = g.s_set(unit).map(|c| c.tap).collect();
        assert_eq!(a, (0..24).collect::<Vec<_>>(), "the tap is the column of the (5, 24) weight");
    }
}
