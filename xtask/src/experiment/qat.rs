//! The QAT cells and their control, through cinder-qat's fine-tuning API with the
//! experiment's `[qat]` recipe: `qat` fine-tunes the trained model with fake-quant under
//! the cell's config and converts it with the learned parameters; `qat-control`
//! fine-tunes it as long without fake-quant and quantizes the result by PTQ (the cell's
//! observer and config), so the report separates QAT's own effect from the extra
//! training.

use burn::module::Module;
use cinder_model::{BackendKind, GraphNet, TrainConfig};
use cinder_qat::QatConfig;
use cinder_runtime::{QuantizedModel, convert};
use cinder_tensor::graph::FloatGraph;
use indicatif::ProgressBar;

use super::calibration::{Calibrated, Calibrations};
use super::config::{CellConfig, Method};
use super::context::Context;
use super::training::graph_key;
use crate::dataset::DatasetImages;
use crate::progress::show;

/// A fine-tuned cell's int8 model, the float graph it was made from, and (control) the
/// calibration of its PTQ.
pub struct FineTuned {
    pub model: QuantizedModel,
    pub graph: FloatGraph,
    pub calibration: Option<Calibrated>,
}

/// The QAT config of `cell` under the experiment's recipe (the control's for
/// `qat-control`).
fn qat_config(ctx: &Context<'_>, cell: &CellConfig) -> QatConfig {
    let recipe = &ctx.config.qat;
    let config = QatConfig {
        quant: cell.quant.clone(),
        training: TrainConfig {
            epochs: recipe.epochs,
            lr: recipe.lr,
            // Fine-tuning runs its fixed number of epochs.
            early_stopping: None,
            ..ctx.config.training.clone()
        },
        ..QatConfig::default()
    };
    match cell.method {
        Method::QatControl => config.control(),
        _ => config,
    }
}

pub fn fine_tuned(
    ctx: &Context<'_>,
    cell: &CellConfig,
    bar: &ProgressBar,
) -> anyhow::Result<FineTuned> {
    let config = qat_config(ctx, cell);
    let train = ctx.data.train.clone().limit(ctx.config.qat.train_images);
    let images = DatasetImages {
        data: &train,
        norm: ctx.data.norm,
    };
    let steps = train.len().div_ceil(config.training.batch_size) * config.training.epochs;
    bar.set_length(steps as u64);
    bar.set_message(if config.fake_quant {
        "QAT fine-tuning"
    } else {
        "control fine-tuning"
    });
    let mut step = 0;
    let start = GraphNet::from_float_graph(ctx.graph, &ctx.model.device())?;
    let tuned = cinder_qat::fine_tune(&start, &images, &config, BackendKind::Flex, &mut |p| {
        step += 1;
        show(bar, p);
        bar.set_position(step);
    })?;
    if config.fake_quant {
        let export = tuned.export()?;
        return Ok(FineTuned {
            model: export.convert()?,
            graph: export.graph,
            calibration: None,
        });
    }
    bar.set_message(format!("calibrating the control ({})", cell.observer));
    let graph = tuned.net().valid().to_float_graph()?;
    let net = GraphNet::from_float_graph(&graph, &ctx.model.device())?;
    let graph_key = graph_key(&graph)?;
    let dir = ctx.out.join("calibration").join(&cell.name);
    let mut calibrations =
        Calibrations::new(&net, &graph_key, ctx.data, &ctx.config.calibration, dir)?;
    let calibrated = calibrations.get(cell.observer)?.clone();
    Ok(FineTuned {
        model: convert(&graph, &calibrated.table, &cell.quant)?,
        graph,
        calibration: Some(calibrated),
    })
}
