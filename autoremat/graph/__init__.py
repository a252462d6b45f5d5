"""The bottom layer: the op vocabulary and facts about one joint forward+backward graph.

``op_classes`` names what each node is, ``storage`` which storage a value lives in, ``placement`` where
each node runs (one placement for every solver, the memory model and the rewrite), and ``analysis``
gathers them into the record every later stage reads. Nothing here imports another autoremat layer
(docs/architecture.md, "Layers").
"""
