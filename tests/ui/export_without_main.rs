use extension_api::{BoxError, Renderer, RendererExtension};

struct OnlyRenderer;

impl RendererExtension for OnlyRenderer {
    async fn activate(_: Renderer) -> Result<Self, BoxError> {
        Ok(OnlyRenderer)
    }
}

extension_api::export_extension!(renderer = OnlyRenderer);

fn main() {}
