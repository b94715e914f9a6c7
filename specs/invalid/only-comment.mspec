# a file with nothing but a comment
