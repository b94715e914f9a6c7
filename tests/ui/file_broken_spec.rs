// A broken spec file: the message names file.mspec:line:col.
modelspec::model_file!("../../../../tests/ui/specs/broken.mspec");

fn main() {}
