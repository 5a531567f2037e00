use extension_api::{BoxError, Main, MainExtension};

struct Hello;

impl MainExtension for Hello {
    async fn activate(_: Main) -> Result<Self, BoxError> {
        Ok(Hello)
    }
}

// The web renderer's directory is relative to the crate, and must exist.
extension_api::export_extension!(main = Hello, web = "no-such-dir");

fn main() {}
