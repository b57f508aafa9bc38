"""Data: labelled tables, images and arrays, their readers, and the inputs each model kind reads."""
