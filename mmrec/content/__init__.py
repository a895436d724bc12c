"""Item content: `mmrec embed`, content models, item inputs, images, the feature-file format."""
