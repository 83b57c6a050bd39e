"""VNN-LIB properties: the parser of the supported subset."""
