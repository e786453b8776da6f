//! Run-time backend choice: `flex` (default), `ndarray`, and `wgpu` when compiled in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's pure-Rust CPU backend (SIMD + rayon): the fastest CPU choice here.
    #[default]
    Flex,
    /// burn's ndarray backend (deprecated upstream, kept selectable; deterministic).
    Ndarray,
    /// wgpu (Vulkan/Metal/...), only with the `wgpu` feature.
    Wgpu,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [BackendKind::Flex, BackendKind::Ndarray, BackendKind::Wgpu];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
        }
    }

    /// The plain (inference) device of this backend; training uses `device.autodiff()`.
    pub fn device(self) -> Result<Device, ModelError> {
        match self {
            BackendKind::Flex => Ok(Device::flex()),
            // Deprecated upstream in favour of flex; kept because the design names it.
            #[allow(deprecated)]
            BackendKind::Ndarray => Ok(Device::ndarray()),
            BackendKind::Wgpu => wgpu_device(),
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, ModelError> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, ModelError> {
    Err(ModelError::BackendUnavailable("wgpu".into()))
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| ModelError::UnknownBackend(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_an_error() {
        for b in BackendKind::ALL {
            assert_eq!(b.name().parse::<BackendKind>().unwrap(), b);
        }
        assert!(matches!(
            "cuda".parse::<BackendKind>(),
            Err(ModelError::UnknownBackend(_))
        ));
        assert!(BackendKind::Flex.device().is_ok());
        #[cfg(not(feature = "wgpu"))]
        assert!(matches!(
            BackendKind::Wgpu.device(),
            Err(ModelError::BackendUnavailable(_))
        ));
    }
}
