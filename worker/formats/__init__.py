"""Wire and file formats: input and verdict records, recorded streams."""
