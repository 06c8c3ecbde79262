# Run by `cmake --install` (see CMakeLists.txt): writes kbridge.service for the prefix being
# installed to (--prefix wins over CMAKE_INSTALL_PREFIX at configure time), then installs it.
# In: _kb_unit_in (the template), _kb_unit_dir (relative: under the prefix), _kb_build.
if(IS_ABSOLUTE "${_kb_unit_dir}")
  set(_kb_dest "${_kb_unit_dir}")
else()
  set(_kb_dest "${CMAKE_INSTALL_PREFIX}/${_kb_unit_dir}")
endif()
set(KBRIDGE_PREFIX "${CMAKE_INSTALL_PREFIX}")
configure_file("${_kb_unit_in}" "${_kb_build}/kbridge.service" @ONLY)
file(INSTALL DESTINATION "${_kb_dest}" TYPE FILE
     PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ WORLD_READ
     FILES "${_kb_build}/kbridge.service")
