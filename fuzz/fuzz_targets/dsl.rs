//! Fuzzes the `.cnn` front end and the planner: any input must compile to a plan or to
//! an error, never panic. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run dsl` (see fuzz/README.md).
//! A chain is planned in all five modes with and without `std_cap = 3`; a graph (blocks,
//! `+`, `cat`, batchnorm, …) through the graph analysis in all five modes, and with the
//! map analysis in the forward mode.
#![no_main]

use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::{GraphRequest, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let src = Source::new("fuzz.cnn", text);
    let graph = match src.graph() {
        Ok(graph) => graph,
        Err(e) => {
            // Rendering a diagnostic slices the source at its spans: it must not panic.
            std::hint::black_box(e.to_string());
            return;
        }
    };
    let net = match cnnc::network(&graph, Some(&src)) {
        Ok(net) => net,
        Err(e) => {
            std::hint::black_box(e.to_string());
            for mode in Mode::ALL {
                for analysis in [Analysis::Paper, Analysis::Map] {
                    if analysis == Analysis::Map && mode != Mode::Forward {
                        continue;
                    }
                    let req = GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale: 1.0, batch: None };
                    match cnnc::plan_graph(&graph, req) {
                        Ok(plan) => std::hint::black_box(plan.to_json()),
                        Err(e) => std::hint::black_box(e.to_string()),
                    };
                }
            }
            return;
        }
    };
    for mode in Mode::ALL {
        for std_cap in [None, Some(3.0)] {
            match cnnc::plan(&net, Options { mode, std_cap }) {
                Ok(plan) => {
                    // Serializing `expect`s success: check that it holds for every plan.
                    std::hint::black_box(plan.to_json());
                    if mode == Mode::Forward && std_cap.is_none() {
                        std::hint::black_box(plan.to_yaml());
                    }
                }
                Err(e) => {
                    std::hint::black_box(e.to_string());
                }
            }
        }
    }
});
