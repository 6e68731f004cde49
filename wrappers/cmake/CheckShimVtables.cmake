# Fails when a TensorRT-LLM interface has a virtual function a kvxfer shim
# class does not override, including virtuals with a default body: those
# compile silently, and a shim built on headers that lack them would be one
# slot short inside a TensorRT-LLM that has them; with the headers that have
# them, the shim would run TensorRT-LLM's default body instead of kvxfer's.
#
# How: GCC's -fdump-lang-class lays out every vtable of a translation unit;
# in a shim class's vtable, every slot must name that class's own function.
#
# As a function (wrappers/CMakeLists.txt):
#   kvxfer_check_shim_vtables(RESULT <var> CXX <compiler> INCLUDES <dirs...> SOURCES <files...> WORK_DIR <dir>)
# or as a script (CI):
#   cmake -DCXX=g++ -DINCLUDES="a;b" -DSOURCES="x.cpp;y.cpp" -DWORK_DIR=/tmp/w -P CheckShimVtables.cmake
cmake_minimum_required(VERSION 3.16)

# Sets ${out} to "" when every shim class overrides every slot, else to the report.
function(_kvxfer_unoverridden_slots dump out)
  file(STRINGS "${dump}" lines)
  set(report "")
  set(class "")
  set(missing "")
  set(count 0)
  foreach(line IN LISTS lines)
    if(line MATCHES "^Vtable for (kvxfer_trtllm::{anonymous}::[A-Za-z0-9_]+)$")
      set(class "${CMAKE_MATCH_1}")
      set(missing "")
      set(count 0)
    elseif(class AND line MATCHES "^[0-9]+ +\\(int \\(\\*\\)\\(\\.\\.\\.\\)\\)(.*)$")
      set(slot "${CMAKE_MATCH_1}")
      string(FIND "${slot}" "${class}::" own)
      # Offset-to-top and type-info slots are data, not functions.
      if(NOT slot MATCHES "^-?[0-9]+$" AND NOT slot MATCHES "^\\(& _ZTI" AND NOT own EQUAL 0)
        math(EXPR count "${count} + 1")
        list(APPEND missing "${slot}")
      endif()
    elseif(class AND line STREQUAL "")
      if(count GREATER 0)
        string(REPLACE "kvxfer_trtllm::{anonymous}::" "" shim "${class}")
        list(JOIN missing ", " names)
        string(APPEND report "  ${shim}: ${count} virtual(s) not overridden: ${names}\n")
      endif()
      set(class "")
    endif()
  endforeach()
  set(${out} "${report}" PARENT_SCOPE)
endfunction()

function(kvxfer_check_shim_vtables)
  cmake_parse_arguments(arg "" "RESULT;CXX;WORK_DIR" "INCLUDES;SOURCES;DEFINES" ${ARGN})
  file(MAKE_DIRECTORY "${arg_WORK_DIR}")
  set(flags -std=c++17 -fsyntax-only -fdump-lang-class -D_GLIBCXX_USE_CXX11_ABI=1)
  foreach(dir IN LISTS arg_INCLUDES)
    list(APPEND flags "-I${dir}")
  endforeach()
  foreach(def IN LISTS arg_DEFINES)
    list(APPEND flags "-D${def}")
  endforeach()
  set(report "")
  foreach(src IN LISTS arg_SOURCES)
    get_filename_component(name "${src}" NAME)
    set(dir "${arg_WORK_DIR}/${name}.d")
    file(REMOVE_RECURSE "${dir}")
    file(MAKE_DIRECTORY "${dir}")
    execute_process(COMMAND "${arg_CXX}" ${flags} "${src}" WORKING_DIRECTORY "${dir}"
      RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_QUIET)
    file(GLOB dumps "${dir}/*.class")
    if(NOT rc EQUAL 0 OR NOT dumps)
      string(APPEND report "${name}: could not lay out its classes (${arg_CXX} -fdump-lang-class):\n${err}\n")
      continue()
    endif()
    list(GET dumps 0 dump)
    _kvxfer_unoverridden_slots("${dump}" found)
    if(found)
      string(APPEND report "${name}:\n${found}")
    endif()
  endforeach()
  set(${arg_RESULT} "${report}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  kvxfer_check_shim_vtables(RESULT report CXX "${CXX}" INCLUDES ${INCLUDES} SOURCES ${SOURCES} WORK_DIR "${WORK_DIR}")
  if(report)
    message(FATAL_ERROR "kvxfer shims do not cover the TensorRT-LLM interfaces:\n${report}")
  endif()
  message(STATUS "kvxfer shims override every virtual of the interfaces they implement")
endif()
