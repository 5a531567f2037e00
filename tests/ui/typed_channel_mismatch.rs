use extension_api::{BoxError, Main, MainExtension, RequestChannel};

const GREET: RequestChannel<String, String> = RequestChannel::new("greet");

struct Hello;

impl MainExtension for Hello {
    async fn activate(ipc: Main) -> Result<Self, BoxError> {
        // The channel says the request is a String: a u32 handler does not compile.
        ipc.handle(GREET, |number: u32, _| async move { Ok::<_, String>(number.to_string()) })?;
        Ok(Hello)
    }
}

fn main() {}
