"""npu_lib"""
