//! ReLU with PyTorch's gradient: the input's gradient is the output's where x > 0, and 0
//! where x ≤ 0.
//!
//! Why: candle's `relu` passes the gradient where x ≥ 0, so at x = 0 exactly (a ReLU of
//! a ReLU's output plus a zero-started residual branch, `--branch-scale 0`) it sent the
//! whole gradient where PyTorch sends none: the probe measured 2.0× PyTorch's gradient at
//! the second block of each ResNet stage. One pass forward, one backward (CPU; elsewhere
//! candle's ops with the same mask).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};

/// `max(x, 0)`, differentiable with the mask x > 0.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() {
        x.apply_op1(Relu)
    } else {
        let zero = x.zeros_like()?;
        x.gt(&zero)?.where_cond(x, &zero)
    }
}

struct Relu;

fn each<T: WithDType>(v: &[T], f: impl Fn(T) -> T + Sync + Send) -> Vec<T> {
    const CHUNK: usize = 1 << 14;
    super::par_filled(v.len(), CHUNK, |i, o| {
        o.iter_mut().zip(&v[i * CHUNK..]).for_each(|(o, &x)| {
            o.write(f(x));
        })
    })
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu-torch"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(each(super::contiguous(v, layout, "the input")?, |x| if x > 0.0 { x } else { 0.0 })),
            CpuStorage::F64(v) => CpuStorage::F64(each(super::contiguous(v, layout, "the input")?, |x| if x > 0.0 { x } else { 0.0 })),
            other => candle_core::bail!("relu: dtype {:?} is not supported (f32 or f64)", other.dtype()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad_res.contiguous()?, &ReluGrad)?))
    }
}

/// (y, dy) → dy where y > 0, else 0.
struct ReluGrad;

fn masked<T: WithDType>(y: &[T], g: &[T]) -> Vec<T> {
    let zero = T::from_f64(0.0);
    const CHUNK: usize = 1 << 14;
    super::par_filled(y.len(), CHUNK, |i, o| {
        for ((o, &y), &g) in o.iter_mut().zip(&y[i * CHUNK..]).zip(&g[i * CHUNK..]) {
            o.write(if y > zero { g } else { zero });
        }
    })
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-torch-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("relu-grad: shapes {:?} and {:?}", l1.shape(), l2.shape());
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => {
                CpuStorage::F32(masked(super::contiguous(y, l1, "the output")?, super::contiguous(g, l2, "the gradient")?))
            }
            (CpuStorage::F64(y), CpuStorage::F64(g)) => {
                CpuStorage::F64(masked(super::contiguous(y, l1, "the output")?, super::contiguous(g, l2, "the gradient")?))
            }
            _ => candle_core::bail!("relu-grad: dtypes {:?} and {:?}", s1.dtype(), s2.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_gradient_at_zero_is_zero_as_in_pytorch() {
        let x = Var::from_slice(&[-1.0f32, 0.0, 0.0, 2.0], (4,), &Device::Cpu).unwrap();
        let y = relu(x.as_tensor()).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.0, 2.0]);
        let w = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
        let grads = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
        // torch.relu's backward (threshold_backward): 0 where x ≤ 0. candle's relu gives 2, 3 at the zeros.
        assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.0, 4.0]);
    }
}
