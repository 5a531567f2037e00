struct NotAnExtension;

extension_api::export_extension!(main = NotAnExtension);

fn main() {}
