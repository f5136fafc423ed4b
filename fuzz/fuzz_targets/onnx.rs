//! Fuzzes the ONNX importer and the planner: any bytes must import (through both the
//! shapes-only reader and the full decoder) to a plan or to an error, never panic, and
//! the two readers must agree; every graph plans (both analyses, --branch-scale 0 too) or
//! errs. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run onnx fuzz/corpus/onnx tests/data/onnx/ok
//! tests/data/onnx/err tests/data/onnx/real` (the fixtures, real exports included, are the seeds).
#![no_main]

use cnnc::analyze::{Analysis, Mode, Options};
use cnnc::onnx::{self, Bytes, ImportOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let slim = onnx::decode_shapes(std::io::Cursor::new(data), data.len() as u64);
    let full = onnx::decode(Bytes::copy_from_slice(data));
    let (Ok(slim), Ok(full)) = (slim, full) else { return };
    for input in [cnnc::InputSize::Declared, cnnc::InputSize::Chw([3, 17, 13]), cnnc::InputSize::Square(9)] {
        let opts = ImportOptions { input };
        let graph = onnx::import(&slim, &opts);
        match (&graph, onnx::import(&full, &opts)) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b, "the shapes-only and the full reader disagree"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("the readers disagree: {:?} vs {:?}", a.as_ref().map(|_| ()), b.map(|_| ())),
        }
        let Ok(graph) = graph else { continue };
        // Any graph plans (chain or DAG, both analyses) or gives an error, never a panic.
        let small = graph.nodes.len() < 64 && graph.nodes.iter().all(|n| n.output.numel() < 1 << 16);
        for analysis in [Analysis::Paper, Analysis::Map] {
            if analysis == Analysis::Map && !small {
                continue;
            }
            for (mode, branch_scale) in [(Mode::Forward, 1.0), (Mode::Backward, 1.0), (Mode::Forward, 0.0)] {
                let req = cnnc::GraphRequest { opts: Options { mode, std_cap: None }, analysis, branch_scale, batch: None };
                if let Ok(plan) = cnnc::plan_graph(&graph, req) {
                    std::hint::black_box(plan.to_json());
                }
            }
        }
        let Ok(net) = cnnc::network(&graph, None) else { continue };
        for mode in [Mode::Forward, Mode::Backward] {
            if let Ok(plan) = cnnc::plan(&net, Options { mode, std_cap: None }) {
                // export draws every weight: only for small networks
                if plan.summary.parameters < 100_000 {
                    let model = onnx::export(&graph, &plan, 1).expect("a plannable graph exports");
                    std::hint::black_box(onnx::encode(&model).expect("a small model encodes"));
                }
            }
        }
    }
});
