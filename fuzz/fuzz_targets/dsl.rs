//! Fuzzes the `.cnn` front end and the planner: any input must compile to a plan or to
//! an error, never panic. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run dsl` (see fuzz/README.md).
#![no_main]

use cnnc::analyze::{Mode, Options};
use cnnc::Source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let src = Source::new("fuzz.cnn", text);
    let net = match src.network() {
        Ok(net) => net,
        Err(e) => {
            // Rendering a diagnostic slices the source at its spans: it must not panic.
            std::hint::black_box(e.to_string());
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
