//! Fuzzes the data readers: any bytes, written as IDX files or as image files in a
//! folder layout, must load to a data set or to an error, never panic or abort, and a
//! loaded set must hold exactly its images' bytes.
//!
//! An input is one or more files separated by [`SEP`], optionally followed by a trailer
//! `[control, size, 0xC7]` (without one: both the IDX and the class-folder layouts,
//! 3 channels, size 8), so that any IDX, PNG or JPEG file is an input as it is. Control
//! bits: 0–1 the layout (0 IDX, 1 `<class>/*`, 2 `train/` + `val/`, 3 IDX and
//! `<class>/*`), 2 three channels (else one), 3–4 the first image extension, 5 IDX files
//! named `.gz`, 6 `--val-split` 0 (else 0.5); the target size is `1 + size % 64`.
//! IDX files are train images, train labels, test images, test labels; a missing one is
//! filled in (labels to match the images' count, test files as copies of train files).
//! Images go to class `a` or `b` (and `train/` or `val/`) by their position, a class
//! without one of its own getting all of them.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run data <corpus> -- -max_total_time=600`.
#![no_main]

use cnnc::train::data::{self, Dataset, Split, Target};
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};

/// Separates the files of one input.
const SEP: &[u8] = b"\n--8<--\n";
const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "PNG"];

fn split_files(body: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.windows(SEP.len()).position(|w| w == SEP) {
        files.push(&rest[..at]);
        rest = &rest[at + SEP.len()..];
    }
    files.push(rest);
    files
}

/// A fresh, empty directory of this process.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-fuzz-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch directory can be made");
    dir
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a file in a folder")).expect("folders can be made");
    std::fs::write(path, bytes).expect("files can be written");
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// Every image is C×S×S bytes, every label names a class.
fn check(ds: &Dataset, target: Target, classes: usize) {
    assert_eq!((ds.channels, ds.size), (target.channels, target.size));
    assert_eq!(ds.pixels.len(), ds.len() * target.channels * target.size * target.size);
    assert!(ds.labels.iter().all(|&l| (l as usize) < classes), "a label past the {classes} classes");
    if !ds.is_empty() {
        let (x, y) = ds.batch(&[0, ds.len() - 1]);
        assert_eq!((x.len(), y.len()), (2 * ds.pixels.len() / ds.len(), 2));
        assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

fn check_split(split: &Split, target: Target) {
    check(&split.train, target, split.classes.len());
    check(&split.val, target, split.classes.len());
}

fn idx_layout(files: &[&[u8]], gz_names: bool, target: Target) {
    let dir = scratch();
    let name = |stem: &str| dir.join(if gz_names { format!("{stem}.gz") } else { stem.to_string() });
    let train_images = files[0].to_vec();
    let train_labels = match files.get(1) {
        Some(f) => f.to_vec(),
        None => {
            // As many labels as the images say, when that is a small number.
            write(&name("probe"), &train_images);
            let n = match data::read_idx(&name("probe")) {
                Ok((dims, _)) => dims.first().copied().unwrap_or(0).min(1 << 16),
                Err(_) => 1,
            };
            idx(&[n as u32], &(0..n).map(|k| (k % 3) as u8).collect::<Vec<_>>())
        }
    };
    let test_images = files.get(2).map_or(train_images.clone(), |f| f.to_vec());
    let test_labels = files.get(3).map_or(train_labels.clone(), |f| f.to_vec());
    for (stem, bytes) in [
        ("train-images-idx3-ubyte", &train_images),
        ("train-labels-idx1-ubyte", &train_labels),
        ("t10k-images-idx3-ubyte", &test_images),
        ("t10k-labels-idx1-ubyte", &test_labels),
    ] {
        write(&name(stem), bytes);
        // The reader alone: dims whose product is the data's length.
        if let Ok((dims, bytes)) = data::read_idx(&name(stem)) {
            assert_eq!(dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)), Some(bytes.len()));
        }
    }
    if let Ok(split) = data::load(&dir, target, 0.5, 0) {
        check_split(&split, target);
        assert!(split.skipped.is_empty(), "IDX images are never skipped");
    }
}

fn folder_layout(files: &[&[u8]], train_val: bool, ext: usize, val_split: f64, target: Target) {
    let dir = scratch();
    let places: Vec<PathBuf> = if train_val {
        ["train/a", "train/b", "val/a", "val/b"].iter().map(|p| dir.join(p)).collect()
    } else {
        ["a", "b"].iter().map(|p| dir.join(p)).collect()
    };
    let mut written = 0;
    for (p, place) in places.iter().enumerate() {
        let own: Vec<usize> = (0..files.len()).filter(|k| k % places.len() == p).collect();
        let mine = if own.is_empty() { (0..files.len()).collect() } else { own };
        for k in mine {
            write(&place.join(format!("{k}.{}", EXTENSIONS[(ext + k) % EXTENSIONS.len()])), files[k]);
            written += 1;
        }
    }
    if let Ok(split) = data::load(&dir, target, val_split, 0) {
        check_split(&split, target);
        assert_eq!(split.classes, ["a", "b"]);
        assert_eq!(split.train.len() + split.val.len() + split.skipped.len(), written, "every file is loaded or skipped");
    }
}

fuzz_target!(|input: &[u8]| {
    let (body, control, size) = match input {
        [body @ .., control, size, 0xC7] => (body, *control, *size),
        _ => (input, 3 | 4, 7),
    };
    let files = split_files(body);
    if files.len() > 16 {
        return;
    }
    let target = Target { channels: if control & 4 != 0 { 3 } else { 1 }, size: 1 + size as usize % 64 };
    let (ext, gz_names) = ((control >> 3 & 3) as usize, control & 32 != 0);
    let val_split = if control & 64 != 0 { 0.0 } else { 0.5 };
    match control & 3 {
        0 => idx_layout(&files, gz_names, target),
        1 => folder_layout(&files, false, ext, val_split, target),
        2 => folder_layout(&files, true, ext, val_split, target),
        _ => {
            idx_layout(&files, gz_names, target);
            folder_layout(&files, false, ext, val_split, target);
        }
    }
});
