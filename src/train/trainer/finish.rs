//! The end of a run: the kept model scored once on each side (with intervals, calibration and
//! optional temperature scaling), its predictions, model and metrics written.

use super::*;

impl Trainer<'_> {
    pub(super) fn finish(mut self) -> anyhow::Result<TrainOutcome> {
        self.warn_unlearnt();
        // Final artefacts from the best epoch.
        let final_net = match self.best.take() {
            Some(b) => b,
            None => self.net().valid(),
        };
        let final_bytes = final_net.to_bytes()?;
        // The model's description as the run wrote it at its start.
        let info: ModelInfo = crate::runs::read_json(&self.run.path.join("model.json"))?;
        let mut predictions = Vec::new();
        let mut val_metrics = None;
        let mut test_metrics = None;
        let mut patient_metrics = None;
        let mut test_predictions = None;
        // Temperature scaling (`--calibrate`), fitted where the predictions are held out from
        // the model they come from: for a solved probe, the held-out predictions of the inner
        // folds' fits with the chosen settings (the kept model is refitted with the same
        // settings, as scikit-learn's `CalibratedClassifierCV(ensemble=False)` does); otherwise
        // the validation side's predictions of the kept network itself.
        let calibrate =
            self.config.calibrate && matches!(self.data.task, Task::Binary | Task::MultiClass);
        let mut temperature: Option<(f32, String)> = None;
        if calibrate
            && let Some(c) = &self.chosen
            && !c.held_out.items.is_empty()
        {
            let truth: Vec<usize> = c
                .held_out
                .items
                .iter()
                .map(|&i| class_of(self.data, i))
                .collect();
            temperature = Some((
                decision::fit_temperature(&c.held_out.probs, &truth),
                format!(
                    "{} by fits with the chosen settings that did not see them{}",
                    c.selection.chosen_on,
                    if self.data.test.is_empty() {
                        " (the validation side was not among them: its calibration error after \
                         scaling is honest)"
                    } else {
                        " (they include the validation side, whose calibration error after \
                         scaling is optimistic; the test side's is not)"
                    }
                ),
            ));
        }
        for (side, items) in [("val", &self.data.val), ("test", &self.data.test)] {
            if items.is_empty() {
                continue;
            }
            // Scored through the saved model's contract, as `predict` and `serve` score.
            let classifier = crate::model::Classifier::from_bytes(
                info.clone(),
                match (&self.chosen, side) {
                    // The validation side is scored by the choice fitted on the training
                    // side, not by a refit that has seen it.
                    (Some(c), "val") => c.net.to_bytes()?,
                    _ => final_bytes.clone(),
                },
                &self.plain,
            )?;
            let (kept, probs) = classify_side(
                &classifier,
                &self.feeder,
                self.data,
                items,
                self.config.batch_size,
            );
            let loss = side_loss(self.data, &kept, &probs, &self.weights);
            let truth: Vec<usize> = kept.iter().map(|&i| class_of(self.data, i)).collect();
            if calibrate && temperature.is_none() && side == "val" && !kept.is_empty() {
                temperature = Some((
                    decision::fit_temperature(&probs, &truth),
                    "the validation side's predictions of the kept model (its calibration error \
                     after scaling is optimistic; the test side's is not)"
                        .into(),
                ));
            }
            let before = temperature
                .as_ref()
                .and_then(|_| crate::experiment::uncertainty::calibration(&truth, &probs, 10))
                .map(|c| c.ece);
            let (probs, loss) = match &temperature {
                Some((t, _)) => {
                    let scaled: Vec<Vec<f32>> = probs
                        .iter()
                        .map(|p| decision::with_temperature(p, *t))
                        .collect();
                    // The reported loss is that of the reported (scaled) probabilities.
                    let loss = side_loss(self.data, &kept, &scaled, &self.weights);
                    (scaled, loss)
                }
                None => (probs, loss),
            };
            // The final score of a side: its metrics with bootstrap intervals and calibration.
            let mut m = crate::experiment::uncertainty::score(
                self.data.task,
                &self.data.labels,
                &kept
                    .iter()
                    .map(|&i| self.data.items[i].target.clone())
                    .collect::<Vec<_>>(),
                &kept
                    .iter()
                    .map(|&i| self.data.items[i].patient.clone())
                    .collect::<Vec<_>>(),
                &probs,
                self.config.seed,
            );
            m.loss = Some(loss);
            if side == "val" {
                m.chose = self.chosen.as_ref().map(|c| c.selection.clone());
            }
            if let (Some((t, fitted_on)), Some(before), Some(after)) =
                (&temperature, before, m.calibration.as_ref().map(|c| c.ece))
            {
                m.temperature = Some(metrics::TemperatureScaling {
                    temperature: *t,
                    fitted_on: fitted_on.clone(),
                    ece_before: before,
                    ece_after: after,
                });
            }
            for (&i, p) in kept.iter().zip(&probs) {
                predictions.push((side, i, p.clone()));
            }
            if side == "val" {
                if self.data.task != Task::MultiLabel
                    && kept.iter().all(|&i| self.data.items[i].patient.is_some())
                {
                    let patients: Vec<&str> = kept
                        .iter()
                        .map(|&i| self.data.items[i].patient.as_deref().unwrap_or(""))
                        .collect();
                    let (_, pt, pp) = metrics::aggregate_by_patient(&patients, &truth, &probs);
                    patient_metrics = Some(metrics::evaluate_single(
                        self.data.task,
                        &self.data.labels,
                        &pt,
                        &pp,
                    ));
                }
                val_metrics = Some(m);
            } else {
                test_metrics = Some(m);
                test_predictions = Some(crate::train::engine::ScoredSide {
                    task: self.data.task,
                    labels: self.data.labels.clone(),
                    targets: kept
                        .iter()
                        .map(|&i| self.data.items[i].target.clone())
                        .collect(),
                    patients: kept
                        .iter()
                        .map(|&i| self.data.items[i].patient.clone())
                        .collect(),
                    probs: probs.clone(),
                });
            }
        }
        let val_metrics = val_metrics.context("no validation predictions")?;
        if let Some((t, _)) = temperature {
            // Every prediction of the kept model uses the temperature (`model::Classifier`).
            let mut info = info;
            info.temperature = Some(t);
            self.run.write_json("model.json", &info)?;
        }
        self.run.write_bytes("model.safetensors", &final_bytes)?;
        self.run.write_bytes(
            "predictions.csv",
            predictions_csv(self.data, &predictions).as_bytes(),
        )?;
        self.run.write_json(
            "metrics.json",
            &crate::runs::MetricsFile {
                format_version: crate::runs::FORMAT_VERSION,
                best_epoch: self.progress.best_epoch,
                val: val_metrics.clone(),
                test: test_metrics.clone(),
                val_patients: patient_metrics.clone(),
            },
        )?;
        if let Some(c) = &val_metrics.confusion {
            self.run.write_json(
                "confusion.json",
                &crate::runs::ConfusionFile {
                    split: "val".into(),
                    epoch: self.progress.best_epoch,
                    matrix: c.clone(),
                },
            )?;
        }
        let elapsed_secs = self.started.elapsed().as_secs_f64();
        emit(
            self.run,
            self.sink,
            TrainEvent::Finished {
                best_epoch: self.progress.best_epoch,
                metrics: Box::new(val_metrics.clone()),
                patient_metrics: patient_metrics.map(Box::new),
                elapsed_secs,
            },
        );
        self.run
            .set_status(RunState::Finished, self.progress.epoch, None)?;
        Ok(TrainOutcome {
            run_dir: self.run.path.clone(),
            run_id: self.run.id.clone(),
            state: RunState::Finished,
            metrics: Some(val_metrics),
            test_metrics,
            test_predictions,
        })
    }
}

/// `path,patient,split,truth,predicted,p_<label>…` rows.
fn predictions_csv(data: &Prepared, rows: &[(&str, usize, Vec<f32>)]) -> String {
    let mut out = String::from("path,patient,split,truth,predicted");
    for l in &data.labels {
        out.push_str(&format!(",{}", csv_field(&format!("p_{l}"))));
    }
    out.push('\n');
    for (side, i, p) in rows {
        let item = &data.items[*i];
        let truth = data.label_string(item);
        let pred = decision::predicted_label(data.task, &data.labels, p);
        out.push_str(&format!(
            "{},{},{side},{},{}",
            csv_field(&item.name),
            csv_field(item.patient.as_deref().unwrap_or("")),
            csv_field(&truth),
            csv_field(&pred)
        ));
        for v in p {
            out.push_str(&format!(",{v:.6}"));
        }
        out.push('\n');
    }
    out
}
