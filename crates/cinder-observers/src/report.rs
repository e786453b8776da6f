//! The per-layer quantization error report: every weight tensor of a float graph
//! against its quantized copy, and every calibrated activation against its
//! fake-quantized copy, as [`ErrorMetrics`] (mean absolute error, MSE, max error,
//! SQNR dB), saved as JSON.
//!
//! Activations arrive batch after batch, so their errors are kept as sums and turned
//! into metrics at the end, with the definitions of [`ErrorMetrics::between`] (a test
//! holds the two equal on concatenated batches).

use std::collections::BTreeMap;
use std::path::Path;

use cinder_tensor::graph::FloatGraph;
use cinder_tensor::io::{FileError, read_json, write_json_atomic};
use cinder_tensor::{
    ErrorAccumulator, ErrorMetrics, QuantParams, QuantScheme, Tensor, fake_quantize,
};
use serde::{Deserialize, Serialize};

use crate::error::ObserverError;
use crate::scan::min_max;
use crate::table::CalibrationTable;
use crate::weights::weight_params;

/// Version of the report's JSON layout.
pub const REPORT_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReport {
    pub format_version: u32,
    /// The activation observer (`minmax`, `percentile=99.99`, ...).
    pub observer: String,
    pub weight_scheme: QuantScheme,
    pub activation_scheme: QuantScheme,
    /// Node name -> error of its weight.
    pub weights: BTreeMap<String, ErrorMetrics>,
    /// Tensor name (as in the calibration table) -> error of that activation.
    pub activations: BTreeMap<String, ErrorMetrics>,
}

impl ErrorReport {
    pub fn new(
        observer: impl Into<String>,
        weight_scheme: QuantScheme,
        activation_scheme: QuantScheme,
        weights: BTreeMap<String, ErrorMetrics>,
        activations: BTreeMap<String, ErrorMetrics>,
    ) -> Self {
        Self {
            format_version: REPORT_FORMAT_VERSION,
            observer: observer.into(),
            weight_scheme,
            activation_scheme,
            weights,
            activations,
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        write_json_atomic(path, self)
    }

    /// Loads a report, rejecting other format versions.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let report: Self = read_json(path)?;
        if report.format_version != REPORT_FORMAT_VERSION {
            return Err(FileError::Content {
                path: path.to_path_buf(),
                message: format!(
                    "format_version {} is not supported (expected {REPORT_FORMAT_VERSION})",
                    report.format_version
                ),
            });
        }
        Ok(report)
    }
}

/// The error of every weighted node's weight quantized under `scheme` (per channel:
/// along the scheme's axis, 0 = output channel).
pub fn weight_errors(
    graph: &FloatGraph,
    scheme: &QuantScheme,
) -> Result<BTreeMap<String, ErrorMetrics>, ObserverError> {
    let mut errors = BTreeMap::new();
    for node in graph.nodes() {
        if let Some((w, _)) = node.op.weight_and_bias() {
            let metrics = weight_error(w, scheme)
                .map_err(|e| e.in_tensor(&format!("{}.weight", node.name)))?;
            errors.insert(node.name.clone(), metrics);
        }
    }
    Ok(errors)
}

fn weight_error(w: &impl Tensor<f32>, scheme: &QuantScheme) -> Result<ErrorMetrics, ObserverError> {
    let params = weight_params(w, scheme)?;
    let approx = fake_quantize(w, &params)?;
    Ok(ErrorMetrics::between(w.data(), approx.data())?)
}

/// Running activation errors, one entry per tensor name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivationErrors {
    sums: BTreeMap<String, ErrorAccumulator>,
}

impl ActivationErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one batch of tensor `name` fake-quantized with `params`.
    pub fn observe(
        &mut self,
        name: &str,
        t: &dyn Tensor<f32>,
        params: &QuantParams,
    ) -> Result<(), ObserverError> {
        let batch = batch_errors(t.data(), params).map_err(|e| e.in_tensor(name))?;
        self.sums.entry(name.to_owned()).or_default().merge(&batch);
        Ok(())
    }

    /// [`ActivationErrors::observe`] with the parameters `table` holds for `name`.
    pub fn observe_with_table(
        &mut self,
        name: &str,
        t: &dyn Tensor<f32>,
        table: &CalibrationTable,
    ) -> Result<(), ObserverError> {
        let range = table
            .get(name)
            .ok_or_else(|| ObserverError::UnknownTensor {
                name: name.to_owned(),
            })?;
        self.observe(name, t, &range.params)
    }

    /// Takes in the batches `other` saw.
    pub fn merge(&mut self, other: &Self) {
        for (name, s) in &other.sums {
            self.sums.entry(name.clone()).or_default().merge(s);
        }
    }

    pub fn metrics(&self) -> BTreeMap<String, ErrorMetrics> {
        self.sums
            .iter()
            .map(|(name, s)| (name.clone(), s.metrics()))
            .collect()
    }
}

/// The error sums of one batch of `data` fake-quantized with `params`; empty or
/// non-finite input is an error.
fn batch_errors(data: &[f32], params: &QuantParams) -> Result<ErrorAccumulator, ObserverError> {
    min_max(data)?;
    let mut sums = ErrorAccumulator::default();
    for &x in data {
        sums.add(x, params.fake_quantize(x));
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use cinder_tensor::graph::{Linear, Op};
    use cinder_tensor::{Granularity, TensorBuf};

    #[test]
    fn activation_sums_match_error_metrics_on_all_batches() {
        let mut rng = Rng::new(4);
        let batches: Vec<Vec<f32>> = (0..3).map(|_| rng.normals(500)).collect();
        let params = QuantParams::from_range(-2.0, 2.0, &QuantScheme::activations_uint8()).unwrap();
        let mut errors = ActivationErrors::new();
        let mut other = ActivationErrors::new();
        errors
            .observe("x", &TensorBuf::from_vec(batches[0].clone()), &params)
            .unwrap();
        errors
            .observe("x", &TensorBuf::from_vec(batches[1].clone()), &params)
            .unwrap();
        other
            .observe("x", &TensorBuf::from_vec(batches[2].clone()), &params)
            .unwrap();
        errors.merge(&other);
        let all = batches.concat();
        let approx: Vec<f32> = all.iter().map(|&x| params.fake_quantize(x)).collect();
        let want = ErrorMetrics::between(&all, &approx).unwrap();
        let got = errors.metrics()["x"];
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-12);
        assert!(
            close(got.mean_abs_error, want.mean_abs_error),
            "{got:?} {want:?}"
        );
        assert!(close(got.mse, want.mse) && close(got.sqnr_db.unwrap(), want.sqnr_db.unwrap()));
        assert_eq!(
            (got.max_abs_error, got.count),
            (want.max_abs_error, want.count)
        );
        let exact = batch_errors(&[0.0, -0.0], &params).unwrap().metrics();
        assert_eq!(
            exact,
            ErrorMetrics::between(&[0.0, -0.0], &[0.0, 0.0]).unwrap()
        );
    }

    #[test]
    fn bad_activations_are_errors() {
        let params = QuantParams::from_range(0.0, 1.0, &QuantScheme::activations_uint8()).unwrap();
        let mut errors = ActivationErrors::new();
        let err = errors
            .observe("relu1", &TensorBuf::from_vec(vec![0.5, f32::NAN]), &params)
            .unwrap_err();
        assert!(err.to_string().contains("relu1"), "{err}");
        assert!(errors.metrics().is_empty());
        let table = CalibrationTable::new("minmax", QuantScheme::activations_uint8(), 1);
        assert!(matches!(
            errors.observe_with_table("fc1", &TensorBuf::from_vec(vec![1.0]), &table),
            Err(ObserverError::UnknownTensor { .. })
        ));
    }

    #[test]
    fn weight_report_per_channel_beats_per_tensor_and_round_trips() {
        // Two output channels of very different scales: per-channel quantization keeps
        // the small one, per-tensor flattens it.
        let mut rng = Rng::new(8);
        let mut w = rng.normals(64);
        w[32..].iter_mut().for_each(|x| *x *= 0.01);
        let fc = Linear {
            weight: TensorBuf::new(vec![2, 32], w).unwrap(),
            bias: None,
        };
        let graph = FloatGraph::chain(vec![32], vec![("fc1".into(), Op::Linear(fc))]).unwrap();
        let per_channel = QuantScheme::weights_int8(Granularity::PerChannel { axis: 0 });
        let pc = weight_errors(&graph, &per_channel).unwrap();
        let pt = weight_errors(
            &graph,
            &per_channel.with_granularity(Granularity::PerTensor),
        )
        .unwrap();
        assert!(pc["fc1"].sqnr_db.unwrap() > pt["fc1"].sqnr_db.unwrap());
        assert!(pc["fc1"].mse < pt["fc1"].mse);
        let report = ErrorReport::new(
            "mse",
            per_channel,
            QuantScheme::activations_uint8(),
            pc,
            BTreeMap::new(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        report.save(&path).unwrap();
        // JSON keeps f64 to the last digit or one ulp off.
        let back = ErrorReport::load(&path).unwrap();
        let (a, b) = (back.weights["fc1"], report.weights["fc1"]);
        assert!((a.mse - b.mse).abs() <= 1e-15 * b.mse && a.count == b.count);
        assert_eq!(
            (back.observer, back.weight_scheme),
            (report.observer.clone(), per_channel)
        );
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 7");
        std::fs::write(&path, text).unwrap();
        assert!(ErrorReport::load(&path).is_err());
    }
}
