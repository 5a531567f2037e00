use extension_api::{BoxError, Main, MainExtension};

struct Hello;

impl MainExtension for Hello {
    async fn activate(_: Main) -> Result<Self, BoxError> {
        Ok(Hello)
    }
}

// `web = ...` takes the directory as a string literal.
extension_api::export_extension!(main = Hello, web = 42);

fn main() {}
