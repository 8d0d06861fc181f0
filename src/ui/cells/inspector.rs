//! The image inspector shared by the cells that show predictions (Evaluate, Predict): the
//! image, or its saliency overlay with an opacity slider, beside what the cell knows about it.

use std::path::PathBuf;

use eframe::egui;

use crate::ui::cells::{Loading, Task as BgTask};
use crate::ui::compute::ComputeWorker;

use super::error_label;

/// An image open in an inspector, its saliency map and how the overlay is shown.
pub struct Inspected {
    /// The row (of the cell's predictions) the image belongs to.
    pub row: usize,
    pub image: Loading<egui::TextureHandle>,
    /// The class activation map of the predicted class, computed on the compute worker.
    pub saliency: Loading<SaliencyView>,
    pub show_saliency: bool,
    pub opacity: f32,
    /// The overlay texture and the opacity it was drawn with.
    overlay: Option<(f32, egui::TextureHandle)>,
}

/// A saliency map with the (downscaled) image it is laid over.
pub struct SaliencyView {
    pub map: crate::model::saliency::Saliency,
    pub base: image::RgbImage,
}

impl Inspected {
    /// Opens `image` (row `row`): its preview decodes in the background, its saliency map
    /// for the model of `run_dir` is computed on the compute worker.
    pub fn open(
        ctx: &egui::Context,
        compute: &ComputeWorker,
        row: usize,
        image: PathBuf,
        run_dir: PathBuf,
    ) -> Self {
        let c = ctx.clone();
        let preview = image.clone();
        let task = BgTask::spawn(ctx, "preview", move || {
            crate::ui::thumbs::decode_preview(&preview).map(|img| {
                c.load_texture(
                    preview.display().to_string(),
                    img,
                    egui::TextureOptions::LINEAR,
                )
            })
        });
        let saliency = BgTask::on_worker(ctx, compute, move || {
            // Saliency maps are computed on the CPU network.
            let cpu = crate::model::backend::select(crate::model::backend::BackendChoice::Cpu)
                .map_err(|e| format!("{e:#}"))?;
            let classifier = crate::model::Classifier::load(&run_dir, &cpu.device)
                .map_err(|e| format!("{e:#}"))?;
            let img = crate::dataset::image_io::decode_file_complete(&image)
                .map_err(|e| e.to_string())?;
            let map = classifier
                .saliency(&img, None)
                .map_err(|e| format!("{e:#}"))?;
            Ok(SaliencyView {
                map,
                base: img.thumbnail(320, 320).to_rgb8(),
            })
        });
        Self {
            row,
            image: Loading::Busy(task),
            saliency: Loading::Busy(saliency),
            show_saliency: false,
            opacity: 0.6,
            overlay: None,
        }
    }

    /// True while the image or its map is being computed.
    pub fn busy(&self) -> bool {
        matches!(self.image, Loading::Busy(_)) || matches!(self.saliency, Loading::Busy(_))
    }

    /// Takes in the image and the map when they are ready (once per frame, whether the cell
    /// is shown or not).
    pub fn poll(&mut self) {
        self.image.poll();
        self.saliency.poll();
    }

    /// The image (or its overlay) on the left; `details` and the saliency switch on the right.
    pub fn show(&mut self, ui: &mut egui::Ui, details: impl FnOnce(&mut egui::Ui)) {
        // The overlay texture follows the opacity slider (drawn here: a few hundred pixels).
        if let Loading::Ready(view) = &self.saliency
            && self.show_saliency
            && self
                .overlay
                .as_ref()
                .is_none_or(|(o, _)| *o != self.opacity)
        {
            let img = view.map.overlay(&view.base, self.opacity);
            let color = egui::ColorImage::from_rgb(
                [img.width() as usize, img.height() as usize],
                img.as_raw(),
            );
            let tex =
                ui.ctx()
                    .load_texture("saliency-overlay", color, egui::TextureOptions::LINEAR);
            self.overlay = Some((self.opacity, tex));
        }
        let shown = match (&self.overlay, self.show_saliency, &self.image) {
            (Some((_, tex)), true, _) => Loading::Ready(tex.clone()),
            (_, _, Loading::Ready(tex)) => Loading::Ready(tex.clone()),
            (_, _, Loading::Failed(e)) => Loading::Failed(e.clone()),
            _ => Loading::Idle,
        };
        ui.horizontal_top(|ui| {
            match &shown {
                Loading::Ready(tex) => {
                    let size = tex.size_vec2();
                    let scale = (260.0 / size.x.max(size.y)).min(2.0);
                    ui.add(egui::Image::new(tex).fit_to_exact_size(size * scale));
                }
                Loading::Failed(e) => error_label(ui, &format!("Cannot show this image: {e}")),
                _ => {
                    ui.spinner();
                }
            }
            ui.vertical(|ui| {
                details(ui);
                match &self.saliency {
                    Loading::Ready(view) => {
                        ui.checkbox(&mut self.show_saliency, "Saliency")
                            .on_hover_text(format!(
                                "Where {} comes from: the class activation map of the last feature map ({}×{} grid), exact for a probe or a fine-tuned network",
                                view.map.explains, view.map.width, view.map.height
                            ));
                        if self.show_saliency {
                            ui.add(
                                egui::Slider::new(&mut self.opacity, 0.0..=1.0)
                                    .text("opacity")
                                    .step_by(0.05),
                            );
                        }
                    }
                    Loading::Failed(e) => {
                        ui.label(egui::RichText::new(format!("no saliency map: {e}")).weak());
                    }
                    _ => {
                        ui.horizontal(|ui| {
                            ui.spinner();
                            ui.label("saliency map…");
                        });
                    }
                }
            });
        });
    }
}
