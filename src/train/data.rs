//! Data sets: MNIST-style IDX files, image folders, and a synthetic image-folder generator.
//!
//! In: a `--data` directory. Out: a [`Split`] of train and validation [`Dataset`]s, every
//! image already resized, center-cropped and converted to the network's channel count,
//! kept as bytes (normalized per batch: `(x/255 − 0.5)/0.5`, the reference code's mean and
//! std 0.5).
//!
//! Layouts recognized, in this order:
//! - IDX: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, and the `t10k-`
//!   pair for validation (MNIST, Fashion-MNIST);
//! - `train/<class>/*` and `val/<class>/*` (the reference code's layout);
//! - `<class>/*` only: validation is a `val_split` fraction of each class, chosen by seed.
//!
//! Invariants: classes are the sorted folder names (the same in train and val); a corrupt
//! image (or one too elongated to resize, [`MAX_RESIZED_PIXELS`]) is skipped and counted,
//! never fatal; an empty or missing class folder is an error. No input panics or aborts:
//! IDX headers are checked against the bytes that follow them before anything is
//! allocated for them, and the decoded data set's memory is reserved fallibly.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Layout(String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> DataError {
    DataError::File { path: path.to_path_buf(), message: message.to_string() }
}

/// Images of one split, all of shape (channels, size, size), bytes in row-major order.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub channels: usize,
    pub size: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn image_len(&self) -> usize {
        self.channels * self.size * self.size
    }
    /// The images `idx`, normalized to [−1, 1], as (N, C, H, W) f32 values, and their labels.
    pub fn batch(&self, idx: &[usize]) -> (Vec<f32>, Vec<u32>) {
        let n = self.image_len();
        let mut x = Vec::with_capacity(idx.len() * n);
        for &i in idx {
            x.extend(self.pixels[i * n..(i + 1) * n].iter().map(|&p| (p as f32 / 255.0 - 0.5) / 0.5));
        }
        (x, idx.iter().map(|&i| self.labels[i]).collect())
    }
    /// Keeps the first `n` images.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.pixels.truncate(n * self.image_len());
        }
    }
}

/// A training set, a validation set, the class names, and what was skipped.
#[derive(Clone, Debug, Default)]
pub struct Split {
    pub train: Dataset,
    pub val: Dataset,
    pub classes: Vec<String>,
    /// Images that could not be decoded (skipped), with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Split {
    /// A line for the user when images were skipped: how many, and the first one's reason.
    pub fn skipped_note(&self) -> Option<String> {
        let (path, why) = self.skipped.first()?;
        Some(format!("skipped {} images that could not be decoded, e.g. {}: {why}", self.skipped.len(), path.display()))
    }
}

/// How images are fitted to the network: channels (1 or 3) and square size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub channels: usize,
    pub size: usize,
}

/// Loads `dir` in whichever layout it has (see the module doc).
pub fn load(dir: &Path, target: Target, val_split: f64, seed: u64) -> Result<Split, DataError> {
    if !(target.channels == 1 || target.channels == 3) {
        return Err(DataError::Layout(format!(
            "the network takes {} input channels; image data sets give 1 (gray) or 3 (RGB)",
            target.channels
        )));
    }
    if !(1..=MAX_TARGET_SIZE).contains(&target.size) {
        return Err(DataError::Layout(format!(
            "the network takes {0}×{0} images; image data sets are resized to sizes from 1 to {MAX_TARGET_SIZE}",
            target.size
        )));
    }
    if !dir.is_dir() {
        return Err(file_err(dir, "no such directory"));
    }
    if let Some(train_images) = find_idx(dir, "train-images-idx3-ubyte") {
        let need =
            |stem: &str| find_idx(dir, stem).ok_or_else(|| file_err(dir, format!("has {} but no {stem}[.gz]", train_images.display())));
        let train = idx_dataset(&train_images, &need("train-labels-idx1-ubyte")?, target)?;
        let val = idx_dataset(&need("t10k-images-idx3-ubyte")?, &need("t10k-labels-idx1-ubyte")?, target)?;
        let classes = (0..=train.labels.iter().chain(&val.labels).copied().max().unwrap_or(0)).map(|c| c.to_string()).collect();
        return Ok(Split { train, val, classes, skipped: Vec::new() });
    }
    let (train_dir, val_dir) = (dir.join("train"), dir.join("val"));
    if train_dir.is_dir() && val_dir.is_dir() {
        let classes = class_names(&train_dir)?;
        let val_classes = class_names(&val_dir)?;
        if val_classes != classes {
            return Err(DataError::Layout(format!("{} and {} have different class folders", train_dir.display(), val_dir.display())));
        }
        let mut split = Split { classes, ..Default::default() };
        let train_files = class_files(&train_dir, &split.classes)?;
        let val_files = class_files(&val_dir, &split.classes)?;
        split.train = decode_all(&train_files, target, &mut split.skipped);
        split.val = decode_all(&val_files, target, &mut split.skipped);
        return Ok(split);
    }
    if !(0.0..1.0).contains(&val_split) {
        return Err(DataError::Layout(format!("--val-split must be in [0, 1), got {val_split}")));
    }
    let classes = class_names(dir)?;
    let files = class_files(dir, &classes)?;
    // Per class, a seeded shuffle; the first ⌈val_split·n⌉ go to validation.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_da7a);
    let (mut train_files, mut val_files) = (Vec::new(), Vec::new());
    for c in 0..classes.len() as u32 {
        let mut of_class: Vec<(PathBuf, u32)> = files.iter().filter(|f| f.1 == c).cloned().collect();
        of_class.shuffle(&mut rng);
        let n_val = (val_split * of_class.len() as f64).ceil() as usize;
        val_files.extend(of_class.drain(..n_val));
        train_files.extend(of_class);
    }
    let mut split = Split { classes, ..Default::default() };
    split.train = decode_all(&train_files, target, &mut split.skipped);
    split.val = decode_all(&val_files, target, &mut split.skipped);
    Ok(split)
}

fn find_idx(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")].into_iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Parses an IDX file of unsigned bytes, raw or gzipped (judged by the gzip magic):
/// returns its dimensions and data. Memory grows with the bytes actually read, never with
/// what the header announces: a gzipped file is decompressed no further than its header's
/// element count (plus one byte, to tell a longer file; the rest is counted, not kept).
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| file_err(path, e))?);
    let gzipped = file.fill_buf().map_err(|e| file_err(path, e))?.starts_with(&[0x1f, 0x8b]);
    if gzipped {
        parse_idx(path, flate2::bufread::GzDecoder::new(file), |e| format!("bad gzip data: {e}"))
    } else {
        parse_idx(path, file, |e| e.to_string())
    }
}

/// Reads into `buf` until it is full or the input ends; returns how many bytes came.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn parse_idx(path: &Path, mut r: impl Read, io_err: impl Fn(std::io::Error) -> String) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let err = |e: std::io::Error| file_err(path, io_err(e));
    let mut magic = [0u8; 4];
    if fill(&mut r, &mut magic).map_err(err)? < 4 || magic[0] != 0 || magic[1] != 0 {
        return Err(file_err(path, "not an IDX file (bad magic number)"));
    }
    if magic[2] != 0x08 {
        return Err(file_err(path, format!("IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", magic[2])));
    }
    let mut header = vec![0u8; 4 * magic[3] as usize];
    if fill(&mut r, &mut header).map_err(err)? < header.len() {
        return Err(file_err(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = header.chunks_exact(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize).collect();
    let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| file_err(path, "IDX dimensions overflow"))?;
    let mut data = Vec::new();
    (&mut r).take((numel as u64).saturating_add(1)).read_to_end(&mut data).map_err(err)?;
    if data.len() != numel {
        let mut have = data.len() as u64;
        if data.len() > numel {
            have += std::io::copy(&mut r, &mut std::io::sink()).map_err(err)?;
        }
        return Err(file_err(path, format!("IDX dimensions {dims:?} need {numel} bytes of data, the file has {have}")));
    }
    Ok((dims, data))
}

fn idx_dataset(images: &Path, labels: &Path, target: Target) -> Result<Dataset, DataError> {
    let (dims, pixels) = read_idx(images)?;
    let &[n, h, w] = &dims[..] else {
        return Err(file_err(images, format!("expected 3 IDX dimensions (count, rows, columns), got {dims:?}")));
    };
    if h == 0 || w == 0 {
        return Err(file_err(images, format!("IDX images of {h} rows and {w} columns: an image needs at least one pixel")));
    }
    let (ldims, labels_raw) = read_idx(labels)?;
    if ldims != [n] {
        return Err(file_err(labels, format!("expected {n} labels (one IDX dimension), got dimensions {ldims:?}")));
    }
    let mut ds = Dataset {
        channels: target.channels,
        size: target.size,
        labels: labels_raw.iter().map(|&l| l as u32).collect(),
        pixels: Vec::new(),
    };
    // n ≤ the file's length (h, w ≥ 1), but each image may grow to the target size.
    let (c, s) = (target.channels, target.size);
    if n.checked_mul(ds.image_len()).is_none_or(|total| ds.pixels.try_reserve_exact(total).is_err()) {
        return Err(file_err(images, format!("{n} images of {c}×{s}×{s} bytes are more than this machine can allocate")));
    }
    for k in 0..n {
        let gray =
            image::GrayImage::from_raw(w as u32, h as u32, pixels[k * h * w..(k + 1) * h * w].to_vec()).expect("sizes checked above");
        push_image(&mut ds, image::DynamicImage::ImageLuma8(gray), target).map_err(|e| file_err(images, format!("image {k}: {e}")))?;
    }
    Ok(ds)
}

/// The largest target size accepted ([`Target::size`]).
pub const MAX_TARGET_SIZE: usize = 4096;

/// The most pixels resizing one image may make: the resized image, and the intermediate
/// one the filter makes first (original width × new height). At size 224 a side may reach
/// about 300 000 pixels (an aspect ratio of 1300:1 for a narrow image); a more elongated
/// image is refused (skipped in a folder, an error in an IDX file) rather than asking for
/// gigabytes, or for a size past `u32`.
pub const MAX_RESIZED_PIXELS: u64 = 1 << 26;

/// Resizes the shorter side to `size` then crops the center square (torchvision's
/// `Resize(size)` + `CenterCrop(size)`), and appends it in (C, H, W) byte order.
/// Errs, appending nothing, on an image without pixels or one that would resize past
/// [`MAX_RESIZED_PIXELS`]; `target.size` must be in 1..=[`MAX_TARGET_SIZE`].
fn push_image(ds: &mut Dataset, img: image::DynamicImage, target: Target) -> Result<(), String> {
    let s = target.size as u64;
    let (w, h) = (img.width() as u64, img.height() as u64);
    if w == 0 || h == 0 {
        return Err(format!("the image is {w}×{h} pixels"));
    }
    let img = if (w, h) == (s, s) {
        img
    } else {
        // h·s, w·s < 2^44 and every product below < 2^64: sizes are u32, s ≤ 4096.
        let (nw, nh) = if w <= h { (s, ((h * s + w / 2) / w).max(s)) } else { (((w * s + h / 2) / h).max(s), s) };
        if nh * nw.max(w) > MAX_RESIZED_PIXELS {
            return Err(format!(
                "a {w}×{h} image is too elongated to resize to {s} (it would take {nw}×{nh} pixels, the limit is {MAX_RESIZED_PIXELS})"
            ));
        }
        let (nw, nh, s) = (nw as u32, nh as u32, s as u32);
        let resized = img.resize_exact(nw, nh, image::imageops::FilterType::Triangle);
        resized.crop_imm((nw - s) / 2, (nh - s) / 2, s, s)
    };
    match target.channels {
        1 => ds.pixels.extend_from_slice(img.to_luma8().as_raw()),
        _ => {
            let rgb = img.to_rgb8();
            for c in 0..3 {
                ds.pixels.extend(rgb.pixels().map(|p| p.0[c]));
            }
        }
    }
    Ok(())
}

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| file_err(dir, e))?;
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| file_err(dir, e))?;
        if e.path().is_dir() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(file_err(dir, "no class folders (expected IDX files, train/ and val/, or one folder per class)"));
    }
    Ok(names)
}

fn class_files(dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, u32)>, DataError> {
    let mut out = Vec::new();
    for (c, name) in classes.iter().enumerate() {
        let cdir = dir.join(name);
        let entries = std::fs::read_dir(&cdir).map_err(|e| file_err(&cdir, e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file() && p.extension().is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.to_string_lossy().to_ascii_lowercase().as_str()))
            })
            .collect();
        if files.is_empty() {
            return Err(file_err(&cdir, "class folder has no PNG or JPEG images"));
        }
        files.sort();
        out.extend(files.into_iter().map(|f| (f, c as u32)));
    }
    Ok(out)
}

/// Decodes the files on all cores; undecodable ones are skipped and reported.
fn decode_all(files: &[(PathBuf, u32)], target: Target, skipped: &mut Vec<(PathBuf, String)>) -> Dataset {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    let parts: Vec<(Dataset, Vec<(PathBuf, String)>)> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut ds = Dataset { channels: target.channels, size: target.size, ..Default::default() };
                    let mut bad = Vec::new();
                    for (path, label) in part {
                        match image::ImageReader::open(path)
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.with_guessed_format().map_err(|e| e.to_string()))
                            .and_then(|r| r.decode().map_err(|e| e.to_string()))
                        {
                            Ok(img) => match push_image(&mut ds, img, target) {
                                Ok(()) => ds.labels.push(*label),
                                Err(e) => bad.push((path.clone(), e)),
                            },
                            Err(e) => bad.push((path.clone(), e)),
                        }
                    }
                    (ds, bad)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("decoder threads do not panic")).collect()
    });
    let mut ds = Dataset { channels: target.channels, size: target.size, ..Default::default() };
    for (part, bad) in parts {
        ds.pixels.extend(part.pixels);
        ds.labels.extend(part.labels);
        skipped.extend(bad);
    }
    ds
}

/// Writes a synthetic image-folder data set: `dir/class_XX/NNNN.png`, `per_class`
/// RGB images of `size`×`size` per class. Class `k` is a shape (`k mod 5`: disc,
/// square, triangle, ring, cross) filled with stripes of orientation `k / 5 mod 4`, at a
/// random place, scale and colour, on a noisy background: learnable, not trivially.
/// The same seed gives the same files.
pub fn synthesize(dir: &Path, classes: usize, per_class: usize, size: usize, seed: u64) -> Result<(), DataError> {
    if classes == 0 || per_class == 0 || size < 8 {
        return Err(DataError::Layout("synth-data needs at least 1 class, 1 image per class and a size of at least 8".into()));
    }
    for k in 0..classes {
        let cdir = dir.join(format!("class_{k:02}"));
        std::fs::create_dir_all(&cdir).map_err(|e| file_err(&cdir, e))?;
        for i in 0..per_class {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((k as u64) << 32 | i as u64));
            let img = synth_image(&mut rng, k, size);
            let path = cdir.join(format!("{i:04}.png"));
            let mut bytes = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(|e| file_err(&path, e))?;
            crate::write_atomic(&path, &bytes).map_err(|e| file_err(&path, e))?;
        }
    }
    Ok(())
}

fn synth_image(rng: &mut rand::rngs::StdRng, class: usize, size: usize) -> image::RgbImage {
    let s = size as f64;
    let shape = class % 5;
    let angle = (class / 5 % 4) as f64 * std::f64::consts::PI / 4.0;
    let (cx, cy) = (rng.random_range(0.35..0.65) * s, rng.random_range(0.35..0.65) * s);
    let r = rng.random_range(0.18..0.3) * s;
    let period = rng.random_range(3.0..5.0) * s / 32.0;
    let fg: [f64; 3] = std::array::from_fn(|_| rng.random_range(80.0..255.0));
    let bg: [f64; 3] = std::array::from_fn(|_| rng.random_range(0.0..120.0));
    let (ca, sa) = (angle.cos(), angle.sin());
    let mut img = image::RgbImage::new(size as u32, size as u32);
    for (x, y, p) in img.enumerate_pixels_mut() {
        let (dx, dy) = ((x as f64 + 0.5 - cx) / r, (y as f64 + 0.5 - cy) / r);
        let inside = match shape {
            0 => dx * dx + dy * dy <= 1.0,
            1 => dx.abs() <= 0.8 && dy.abs() <= 0.8,
            2 => dy <= 0.8 && dy >= -1.0 + 2.0 * dx.abs(),
            3 => (0.45..=1.0).contains(&(dx * dx + dy * dy)),
            _ => (dx.abs() <= 0.3 && dy.abs() <= 1.0) || (dy.abs() <= 0.3 && dx.abs() <= 1.0),
        };
        let stripe = (((x as f64 * ca + y as f64 * sa) / period).floor() as i64).rem_euclid(2) == 0;
        let noise = rng.random_range(-40.0..40.0);
        let base = if inside {
            if stripe {
                fg
            } else {
                fg.map(|v| v * 0.45)
            }
        } else {
            bg
        };
        p.0 = base.map(|v| (v + noise).clamp(0.0, 255.0) as u8);
    }
    img
}

/// Shuffled batches of indices for one epoch: the permutation depends only on the
/// seed and the epoch, so that a resumed run sees the same batches.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
    idx.shuffle(&mut rng);
    idx
}
