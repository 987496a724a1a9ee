"""Slicer-side helpers of the ApplePerturb module.

``mrml_io`` (with its parts ``frames``, ``geometry`` and ``results``) imports
only ``slicer`` (MRML nodes and module logics), ``vtk`` and ``numpy``, so it
runs in Slicer and under pytest with the ``slicer-core`` wheel. The panel
controllers (``batch_controller``, ``training_controller``) also use ``qt``
and run only inside the Slicer application.
"""
