//! candle's `conv2d` path (`ConvSpec::apply_candle`: what devices other than the CPU run)
//! with a stride or dilation that differs between the axes, which candle's conv2d does not
//! take (the dilation is written into the kernel, the stride is subsampled): the same
//! values and gradients as cnnc's own conv op, on the CPU.
#![cfg(feature = "train")]

use candle_core::{Device, Tensor, Var};
use cnnc::nn::conv::ConvSpec;

#[test]
fn per_axis_stride_and_dilation_match_cnncs_conv() {
    // (stride, dilation, pad [top, left, bottom, right], groups, kernel [h, w])
    let cases: &[([usize; 2], [usize; 2], [usize; 4], usize, [usize; 2])] = &[
        // Equal strides, but the rows and columns leave different remainders (candle's
        // own backward fails on this).
        ([2, 2], [1, 1], [1, 1, 1, 1], 1, [2, 3]),
        ([2, 1], [1, 1], [1, 1, 1, 1], 1, [3, 3]),
        ([1, 3], [1, 1], [0, 2, 1, 0], 2, [3, 2]),
        ([2, 3], [1, 1], [1, 1, 1, 1], 1, [3, 3]),
        ([4, 2], [1, 1], [1, 0, 2, 1], 1, [2, 3]),
        ([1, 1], [2, 1], [2, 1, 2, 1], 1, [3, 3]),
        ([1, 1], [1, 3], [0, 3, 0, 3], 2, [2, 3]),
        ([2, 1], [1, 2], [1, 2, 1, 2], 1, [3, 3]),
        ([3, 2], [2, 3], [2, 3, 1, 0], 2, [3, 2]),
    ];
    let dev = Device::Cpu;
    for &(stride, dilation, pad, groups, [kh, kw]) in cases {
        let spec = ConvSpec { stride, dilation, pad, groups };
        let (n, c, o, h, w) = (2, 4, 6, 13, 11);
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (n, c, h, w), &dev).unwrap()).unwrap();
        let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (o, c / groups, kh, kw), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, o, &dev).unwrap()).unwrap();
        let ours = spec.apply(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor())).unwrap();
        let theirs = spec.apply_candle(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor())).unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "{spec:?}");
        let r = Tensor::randn(0f64, 1.0, ours.shape(), &dev).unwrap();
        let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let diff = |a: &Tensor, b: &Tensor| flat(a).iter().zip(flat(b)).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(diff(&ours, &theirs) < 1e-10, "{spec:?}: forward differs by {}", diff(&ours, &theirs));
        for (name, v) in [("x", &x), ("w", &wt), ("b", &b)] {
            let (a, z) = (g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(diff(a, z) < 1e-10, "{spec:?}: gradient of {name} differs by {}", diff(a, z));
        }
    }
}
