//! Data sets: IDX files (raw and gzip), image folders (corrupt images skipped and
//! counted, empty classes refused), the seeded validation split, and synth-data.

use cnnc::train::data::{self, Target};
use std::io::Write;
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cnnc-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// 3 train and 2 val images of 2×2 pixels; pixel values encode (image, position).
fn write_idx(dir: &Path, compress: bool) {
    let put = |name: &str, bytes: Vec<u8>| {
        let (name, bytes) = if compress { (format!("{name}.gz"), gz(&bytes)) } else { (name.to_string(), bytes) };
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    put("train-images-idx3-ubyte", idx(&[3, 2, 2], &(0..12).map(|k| k * 20).collect::<Vec<u8>>()));
    put("train-labels-idx1-ubyte", idx(&[3], &[0, 2, 1]));
    put("t10k-images-idx3-ubyte", idx(&[2, 2, 2], &[0, 255, 0, 255, 255, 255, 255, 255]));
    put("t10k-labels-idx1-ubyte", idx(&[2], &[1, 1]));
}

#[test]
fn idx_files_raw_and_gzipped() {
    for compress in [false, true] {
        let dir = tmp(&format!("idx{compress}"));
        write_idx(&dir, compress);
        let split = data::load(&dir, Target { channels: 1, size: 2 }, 0.25, 0).unwrap();
        assert_eq!(split.train.labels, [0, 2, 1]);
        assert_eq!(split.val.labels, [1, 1]);
        assert_eq!(split.classes.len(), 3);
        assert_eq!(&split.train.pixels[4..8], &[80, 100, 120, 140]);
        // Normalized with mean 0.5 and std 0.5: 0 → −1, 255 → 1.
        let (x, y) = split.val.batch(&[0]);
        assert_eq!(x, [-1.0, 1.0, -1.0, 1.0]);
        assert_eq!(y, [1]);
        // Gray replicated to three channels for an RGB network.
        let rgb = data::load(&dir, Target { channels: 3, size: 2 }, 0.25, 0).unwrap();
        assert_eq!(&rgb.val.pixels[..12], &[0, 255, 0, 255, 0, 255, 0, 255, 0, 255, 0, 255]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_idx_files_are_errors_naming_the_file() {
    let dir = tmp("badidx");
    write_idx(&dir, false);
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx(&[4], &[0, 1, 2, 3])).unwrap();
    let err = data::load(&dir, Target { channels: 1, size: 2 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("train-labels-idx1-ubyte") && err.contains("expected 3 labels"), "{err}");
    std::fs::write(dir.join("train-labels-idx1-ubyte"), [1, 2, 3]).unwrap();
    let err = data::load(&dir, Target { channels: 1, size: 2 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("bad magic"), "{err}");
    std::fs::write(dir.join("train-images-idx3-ubyte"), &idx(&[3, 2, 2], &[0; 11])).unwrap();
    let err = data::load(&dir, Target { channels: 1, size: 2 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("need 12 bytes"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn image_folders_resize_crop_skip_corrupt_and_refuse_empty_classes() {
    let dir = tmp("folders");
    for split in ["train", "val"] {
        for class in ["a", "b"] {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            // 8 wide, 4 high at size 4: the short side is already 4, so columns 2..6 are kept.
            let img = image::RgbImage::from_fn(8, 4, |x, _| image::Rgb([(x * 30) as u8, 0, 200]));
            img.save(d.join("0.png")).unwrap();
        }
    }
    std::fs::write(dir.join("train/a/broken.png"), b"not a png").unwrap();
    let split = data::load(&dir, Target { channels: 3, size: 4 }, 0.25, 0).unwrap();
    assert_eq!(split.classes, ["a", "b"]);
    assert_eq!(split.train.len(), 2);
    assert_eq!(split.skipped.len(), 1);
    assert!(split.skipped[0].0.ends_with("train/a/broken.png"));
    // Red channel, first row: columns 2..6 of the original.
    assert_eq!(&split.train.pixels[..4], &[60, 90, 120, 150]);
    // An empty class folder is an error naming it.
    std::fs::create_dir_all(dir.join("val/c")).unwrap();
    let err = data::load(&dir, Target { channels: 3, size: 4 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("different class folders"), "{err}");
    std::fs::create_dir_all(dir.join("train/c")).unwrap();
    let err = data::load(&dir, Target { channels: 3, size: 4 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("train/c") && err.contains("no PNG or JPEG"), "{err}");
    let err = data::load(&dir.join("missing"), Target { channels: 3, size: 4 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("missing") && err.contains("no such directory"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn synth_data_is_deterministic_and_splits_by_seed() {
    let (a, b, c) = (tmp("synthA"), tmp("synthB"), tmp("synthC"));
    data::synthesize(&a, 3, 8, 16, 7).unwrap();
    data::synthesize(&b, 3, 8, 16, 7).unwrap();
    data::synthesize(&c, 3, 8, 16, 8).unwrap();
    let read = |d: &Path| std::fs::read(d.join("class_02/0005.png")).unwrap();
    assert_eq!(read(&a), read(&b));
    assert_ne!(read(&a), read(&c));
    let t = Target { channels: 3, size: 16 };
    let s1 = data::load(&a, t, 0.25, 1).unwrap();
    let s2 = data::load(&a, t, 0.25, 1).unwrap();
    let s3 = data::load(&a, t, 0.25, 2).unwrap();
    // ⌈0.25·8⌉ = 2 validation images per class.
    assert_eq!((s1.train.len(), s1.val.len()), (18, 6));
    assert_eq!(s1.val.pixels, s2.val.pixels);
    assert_ne!(s1.val.pixels, s3.val.pixels);
    // Gray from RGB for a one-channel network.
    let gray = data::load(&a, Target { channels: 1, size: 8 }, 0.25, 1).unwrap();
    assert_eq!(gray.train.pixels.len(), 18 * 64);
    for d in [a, b, c] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// Writes the four IDX files, the train images given, the rest valid.
fn write_idx_with(dir: &Path, train_images: Vec<u8>, train_labels: Vec<u8>) {
    write_idx(dir, false);
    std::fs::write(dir.join("train-images-idx3-ubyte"), train_images).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), train_labels).unwrap();
}

#[test]
fn idx_images_without_pixels_are_errors_not_a_division_by_zero() {
    let dir = tmp("idxzero");
    for dims in [[3, 0, 2], [3, 2, 0], [u32::MAX, 0, 0]] {
        let labels = if dims[0] == 3 { idx(&[3], &[0, 1, 2]) } else { idx(&[1], &[0]) };
        write_idx_with(&dir, idx(&dims, &[]), labels);
        let err = data::load(&dir, Target { channels: 3, size: 4 }, 0.25, 0).unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte") && err.contains("at least one pixel"), "{dims:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn huge_idx_counts_are_errors_before_any_allocation() {
    let dir = tmp("idxhuge");
    // A gzipped header announcing 2^32 − 1 images of 2^16 × 2^16 pixels, and 10 bytes.
    write_idx(&dir, false);
    std::fs::remove_file(dir.join("train-images-idx3-ubyte")).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz(&idx(&[u32::MAX, 1 << 16, 1 << 16], &[7; 10]))).unwrap();
    let err = data::load(&dir, Target { channels: 1, size: 2 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("the file has 10"), "{err}");
    // A gzipped file longer than its header says: the count is exact.
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz(&idx(&[3, 2, 2], &[7; 20]))).unwrap();
    let err = data::load(&dir, Target { channels: 1, size: 2 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("need 12 bytes of data, the file has 20"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    // 2^20 one-pixel images, each growing to 3 × 4096 × 4096 bytes: 48 TiB, refused.
    let dir = tmp("idxgrow");
    let n = 1u32 << 20;
    write_idx_with(&dir, idx(&[n, 1, 1], &vec![0; n as usize]), idx(&[n], &vec![0; n as usize]));
    let err = data::load(&dir, Target { channels: 3, size: 4096 }, 0.25, 0).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("more than this machine can allocate"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn elongated_images_and_bad_sizes_are_skipped_or_refused() {
    let dir = tmp("elongated");
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        image::GrayImage::new(3, 2).save(dir.join(class).join("ok.png")).unwrap();
    }
    // 1 × 2^20 pixels resized to width 4096 would be 2^32 rows (a u32 wrapping to 0).
    image::GrayImage::new(1, 1 << 20).save(dir.join("a/tall.png")).unwrap();
    let split = data::load(&dir, Target { channels: 1, size: 4096 }, 0.0, 0).unwrap();
    assert_eq!(split.train.len(), 2);
    assert_eq!(split.skipped.len(), 1);
    assert!(split.skipped[0].0.ends_with("a/tall.png") && split.skipped[0].1.contains("too elongated"), "{:?}", split.skipped);
    for size in [0, data::MAX_TARGET_SIZE + 1] {
        let err = data::load(&dir, Target { channels: 1, size }, 0.0, 0).unwrap_err().to_string();
        assert!(err.contains("sizes from 1 to 4096"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
