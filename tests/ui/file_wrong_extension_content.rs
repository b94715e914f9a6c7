// A file that is not a spec at all.
modelspec::model_file!("../../../../tests/ui/specs/not_a_spec.mspec");

fn main() {}
