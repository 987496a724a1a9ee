"""MRML plumbing of the ApplePerturb Slicer module, testable outside the application.

The modules here import only ``slicer`` (MRML nodes and module logics), ``vtk``
and ``numpy``, never ``qt``, ``ctk`` or ``slicer.app``, so the same code runs in
Slicer and under pytest with the ``slicer-core`` wheel. ``mrml_io`` gathers the
public functions; ``frames``, ``geometry`` and ``results`` hold their parts.
"""
