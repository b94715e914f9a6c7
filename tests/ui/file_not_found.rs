// model_file! names the path it could not read (paths are relative to the crate root; trybuild
// builds in target/tests/trybuild/modelspec, hence the ../../../..).
modelspec::model_file!("../../../../tests/ui/specs/does_not_exist.mspec");

fn main() {}
