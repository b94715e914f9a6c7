// model_file! takes a string literal.
modelspec::model_file!(specs::tiny);

fn main() {}
