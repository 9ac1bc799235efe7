# gst_fix_wheel_python_includes(): make interface packages build against the ROS PyPI wheels.
#
# The ROS wheels on PyPI ("ros-<pkg>") export imported targets <pkg>__rosidl_generator_py whose
# INTERFACE_INCLUDE_DIRECTORIES name the wheel builder's Python and NumPy headers
# (/opt/python/cp311-cp311/...). Those directories do not exist on a user's machine, so compiling
# the Python typesupport of a package that depends on them fails. Call this after
# rosidl_generate_interfaces(): for every such imported target it drops include directories that
# do not exist and adds this interpreter's Python and NumPy include directories instead.
#
# On a regular ROS install (apt, source build, colcon) every listed directory exists, so no target
# is touched and the function is a no-op. Needs CMake >= 3.21 (IMPORTED_TARGETS directory property).
function(gst_fix_wheel_python_includes)
  get_property(_imported DIRECTORY PROPERTY IMPORTED_TARGETS)
  set(_replacement "")
  foreach(_target IN LISTS _imported)
    if(NOT _target MATCHES "__rosidl_generator_py$")
      continue()
    endif()
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_kept "")
    set(_dropped "")
    foreach(_dir IN LISTS _dirs)
      # keep generator expressions and directories that exist
      if(_dir MATCHES "^\\$<" OR EXISTS "${_dir}")
        list(APPEND _kept "${_dir}")
      else()
        list(APPEND _dropped "${_dir}")
      endif()
    endforeach()
    if(NOT _dropped)
      continue()
    endif()
    if(NOT _replacement)
      find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
      set(_replacement ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
    endif()
    list(APPEND _kept ${_replacement})
    list(REMOVE_DUPLICATES _kept)
    set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
    message(STATUS "gst_ros: ${_target}: replaced missing include dirs [${_dropped}] "
      "with [${_replacement}]")
  endforeach()
endfunction()
