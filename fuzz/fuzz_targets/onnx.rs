//! Fuzzes the ONNX importer and the planner: any bytes must import (through both the
//! shapes-only reader and the full decoder) to a plan or to an error, never panic, and
//! the two readers must agree. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run onnx fuzz/corpus/onnx
//! tests/data/onnx/ok tests/data/onnx/err` (the fixtures are the seeds).
#![no_main]

use cnnc::analyze::{Mode, Options};
use cnnc::onnx::{self, Bytes, ImportOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let slim = onnx::decode_shapes(std::io::Cursor::new(data), data.len() as u64);
    let full = onnx::decode(Bytes::copy_from_slice(data));
    let (Ok(slim), Ok(full)) = (slim, full) else { return };
    for input in [None, Some([3, 17, 13])] {
        let opts = ImportOptions { input };
        let graph = onnx::import(&slim, &opts);
        match (&graph, onnx::import(&full, &opts)) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b, "the shapes-only and the full reader disagree"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("the readers disagree: {:?} vs {:?}", a.as_ref().map(|_| ()), b.map(|_| ())),
        }
        let Ok(graph) = graph else { continue };
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
