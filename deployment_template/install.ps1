# Install (or upgrade) CheXNet from the offline package on Windows with Docker Desktop; step for step with
# install.sh. Reads as a table of contents: verify the tarball with the vendor's key, in a private copy that
# is all it uses from then on (no impact) -> refuse an older package than the one installed -> pre-flight
# (no impact) -> load images -> configure (the install folder becomes Administrators' and SYSTEM's; never
# overwrites .env; writes only the options given, and the host's product_uuid for the container) -> up ->
# wait until every container runs the new version, healthy -> smoke prediction (with -TokenFile). An upgrade
# (or a reinstall) that fails at any step after configuring starts is rolled back, and the installer fails.
# Windows PowerShell 5.1 and PowerShell 7; run as Administrator.
# Usage: .\install.ps1 (-VendorKey vendor_package.crt | -VendorFingerprint HEX)
#            [-Package chexnet-offline-<version>-<variant>.tar.gz (default: the one beside this folder)]
#            [-AllowDowngrade] [-Dir C:\chexnet] [-TokenFile token.txt] [-Hostname NAME] [-Bind ADDRESS]
#            [-HttpsPort 443] [-HttpPort 80]
#            [-DicomDestination AE@host:port -DicomAllowedAes AE,... [-DicomAeTitle CHEXNET]
#             [-DicomPort 11112] [-DicomBind ADDRESS]]   (the optional DICOM node; needs -TokenFile)
#            [-SiteThresholds site-thresholds.json]   (python -m chexnet calibrate's file for this package's bundle)
#            [-Variant cpu|gpu] [-SkipPreflight] [-Timeout 600]
[CmdletBinding()]
param(
    [string]$Dir = 'C:\chexnet',
    [string]$Package,
    [switch]$AllowDowngrade,
    [string]$VendorKey,
    [string]$VendorFingerprint,
    [string]$TokenFile,
    [string]$SiteThresholds,
    [string]$Hostname,
    [string]$Bind,
    [string]$HttpsPort,
    [string]$HttpPort,
    [string]$DicomDestination,
    [string]$DicomAllowedAes,
    [string]$DicomAeTitle,
    [string]$DicomPort,
    [string]$DicomBind,
    [string]$Variant,
    [switch]$SkipPreflight,
    [Alias('TimeoutSeconds')][string]$Timeout = '600'
)
$ErrorActionPreference = 'Stop'
# The unpacked folder: only this script and package-trust.ps1 of it are used; everything else comes from the
# verified private copy ($staged, below). What that leaves open: DESIGN.md "Offline package trust".
$unpacked = $PSScriptRoot
# Dot-sourced from its text: '.' and '&' with a path read '[1]' in a folder name as a wildcard under Windows
# PowerShell 5.1 (PowerShell issue 4726), and could load another folder's file.
. ([scriptblock]::Create([System.IO.File]::ReadAllText((Join-Path $unpacked 'scripts\package-trust.ps1'))))
$Dir = (Get-FullPath $Dir).TrimEnd('\', '/')
$envFile = Join-Path $Dir '.env'

# .env keys the engineer set on the command line, each checked as install.sh checks its option.
$settings = [ordered]@{}
$DnsName = '^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\z'
$Ipv4 = '^([0-9]{1,3}\.){3}[0-9]{1,3}\z'
function Test-PortOption([string]$Option, [string]$Value) {
    if ($Value -cnotmatch '^[0-9]{1,5}\z' -or [int]$Value -lt 1 -or [int]$Value -gt 65535) { throw "$Option must be a port number from 1 to 65535." }
}
if ($PSBoundParameters.ContainsKey('Hostname')) {
    if ($Hostname -cnotmatch $DnsName) { throw '-Hostname must be a DNS name such as chexnet.hospital.local.' }
    $settings['TLS_HOSTNAME'] = $Hostname
}
if ($PSBoundParameters.ContainsKey('Bind')) {
    if ($Bind -cnotmatch $Ipv4) { throw '-Bind must be an IPv4 address of this server (0.0.0.0 for all).' }
    $settings['BIND_ADDRESS'] = $Bind
}
if ($PSBoundParameters.ContainsKey('HttpsPort')) { Test-PortOption '-HttpsPort' $HttpsPort; $settings['HTTPS_PORT'] = $HttpsPort }
if ($PSBoundParameters.ContainsKey('HttpPort')) { Test-PortOption '-HttpPort' $HttpPort; $settings['HTTP_PORT'] = $HttpPort }
if ($PSBoundParameters.ContainsKey('DicomDestination')) {
    if ($DicomDestination -cnotmatch '^[A-Za-z0-9._-]{1,16}@[A-Za-z0-9.-]{1,253}:[0-9]{1,5}\z') { throw '-DicomDestination must say where results go as AE@host:port, e.g. PACS@10.0.0.5:104.' }
    $settings['CHEXNET_DICOM_DESTINATION'] = $DicomDestination
    $settings['COMPOSE_PROFILES'] = 'dicom'
}
if ($PSBoundParameters.ContainsKey('DicomAllowedAes')) {
    if ($DicomAllowedAes -cnotmatch '^[A-Za-z0-9._-]{1,16}(,[A-Za-z0-9._-]{1,16})*\z') { throw "-DicomAllowedAes must be a comma list of AE titles (1 to 16 letters, digits, '.', '_' or '-' each)." }
    $settings['CHEXNET_DICOM_ALLOWED_AES'] = $DicomAllowedAes
}
if ($PSBoundParameters.ContainsKey('DicomAeTitle')) {
    if ($DicomAeTitle -cnotmatch '^[A-Za-z0-9._-]{1,16}\z') { throw "-DicomAeTitle must be 1 to 16 letters, digits, '.', '_' or '-'." }
    $settings['CHEXNET_DICOM_AE_TITLE'] = $DicomAeTitle
}
if ($PSBoundParameters.ContainsKey('DicomPort')) {
    if ($DicomPort -cnotmatch '^[0-9]{1,5}\z' -or [int]$DicomPort -lt 1 -or [int]$DicomPort -gt 65535) { throw '-DicomPort must be a port number from 1 to 65535.' }
    $settings['DICOM_PORT'] = $DicomPort
}
if ($PSBoundParameters.ContainsKey('DicomBind')) {
    if ($DicomBind -cnotmatch $Ipv4) { throw '-DicomBind must be an IPv4 address of this server (0.0.0.0 for all).' }
    $settings['DICOM_BIND_ADDRESS'] = $DicomBind
}
if ($Timeout -cnotmatch '^[0-9]+\z') { throw '-Timeout must be a number of seconds.' }
if ($TokenFile) {
    if (-not (Test-Path -LiteralPath $TokenFile -PathType Leaf)) { throw "-TokenFile $TokenFile cannot be read." }
    # Read elevated: a plain file, never through a link.
    Assert-SiteFile $TokenFile
}
if ($SiteThresholds) {
    if (-not (Test-Path -LiteralPath $SiteThresholds -PathType Leaf)) { throw "-SiteThresholds $SiteThresholds cannot be read." }
    Assert-SiteFile $SiteThresholds
    # in license\ (mounted read-only into the containers, kept and rolled back with it)
    $settings['CHEXNET_SITE_THRESHOLDS'] = '/etc/chexnet/license/site-thresholds.json'
}

# --- values from .env: each checked whole before compose or nginx takes it (as lib.sh) --------------------
# A value may hold only these characters: what paths, lists, AE@host:port and sizes need, and nothing a shell,
# compose's .env parser or nginx would interpret.
$EnvValueChars = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._,:@/+=-'
# These settings may also hold '>', which their own syntax needs (as ENV_VALUE_GT_KEYS in lib.sh).
$EnvValueGtKeys = 'CHEXNET_PRIORITY_RULES'
# KEYS, the rule a sentence names, and the pattern (or the range of whole numbers) the whole value must
# match: check_env_value's cases, one for one.
$EnvRules = @(
    @{ Names = 'HTTPS_PORT', 'HTTP_PORT', 'DICOM_PORT'; Range = 1, 65535; Rule = 'a port number from 1 to 65535' }
    @{ Names = 'BIND_ADDRESS', 'DICOM_BIND_ADDRESS'; Pattern = '^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}\z'; Rule = 'an IPv4 address of this server (0.0.0.0 for all)' }
    @{ Names = 'TLS_HOSTNAME', 'NGINX_API_TASKS'; Pattern = $DnsName; Rule = 'a DNS name such as chexnet.hospital.local' }
    @{ Names = , 'NGINX_RATE_LIMIT'; Pattern = '^[1-9][0-9]{0,5}r/[sm]\z'; Rule = 'a rate such as 20r/s or 600r/m' }
    @{ Names = , 'NGINX_RATE_BURST'; Range = 0, 999999; Rule = 'a whole number from 0 to 999999' }
    @{ Names = , 'NGINX_CONN_LIMIT'; Range = 1, 999999; Rule = 'a whole number from 1 to 999999' }
    @{ Names = , 'CHEXNET_MAX_UPLOAD_MB'; Range = 1, 1024; Rule = 'a whole number of MiB from 1 to 1024' }
    @{ Names = , 'API_REPLICAS'; Range = 1, 99; Rule = 'a number of API tasks from 1 to 99' }
    @{ Names = , 'API_MEM_LIMIT'; Pattern = '^[1-9][0-9]{0,12}[bkmgBKMG]?\z'; Rule = 'a memory size such as 3g or 4096m' }
    @{ Names = , 'CHEXNET_VARIANT'; Pattern = '^(cpu|gpu)\z'; Rule = 'cpu or gpu' }
    @{ Names = , 'CHEXNET_VERSION'; Pattern = '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}\z'; Rule = 'a version such as 0.1.0' }
    @{ Names = , 'COMPOSE_PROFILES'; Pattern = '^[a-z0-9_-]{1,32}(,[a-z0-9_-]{1,32}){0,7}\z'; Rule = 'a comma list of profiles such as dicom' }
)

# Value is a whole number (no sign, no leading zero, at most 6 digits) from Min to Max, as in_range.
function Test-InRange([string]$Value, [int]$Min, [int]$Max) {
    return ($Value -cmatch '^(0|[1-9][0-9]{0,5})\z') -and [int]$Value -ge $Min -and [int]$Value -le $Max
}

# Throws one sentence naming Name unless the whole Value (not its first line) is one Name may take. Empty is
# the default the compose file, and nginx, give it. As check_env_value.
function Test-EnvValue([string]$Name, [string]$Value) {
    $plain = $Value.Length -le 1024
    $allowed = $EnvValueChars
    if (($EnvValueGtKeys -split ' ') -ccontains $Name) { $allowed += '>' }
    foreach ($c in $Value.ToCharArray()) { if ($allowed.IndexOf($c) -lt 0) { $plain = $false } }
    if (-not $plain) {
        throw "$Name in $Dir\.env may hold only letters, digits and . _ , : @ / + = - (no quotes, '`$', backquotes, spaces or line breaks, at most 1024 characters); write the value plainly."
    }
    if ($Value.Length -eq 0) { return }
    foreach ($entry in $EnvRules) {
        if ($entry.Names -cnotcontains $Name) { continue }
        if ($entry.Range) { $good = Test-InRange $Value $entry.Range[0] $entry.Range[1] } else { $good = $Value -cmatch $entry.Pattern }
        if (-not $good) { throw "$Name in $Dir\.env must be $($entry.Rule)." }
    }
}

# The lines of .env: read as bytes (UTF-8), split at LF. Windows editors end lines with CR LF and may begin
# the file with a BOM: both are taken as line ends and dropped (the installer writes .env back without
# them); any other CR stays in its line and is refused with it.
function Read-EnvLines {
    # Ordinal: a culture's comparison ignores a BOM and, with ICU, does not find the LF of a CR LF.
    $text = (New-Object System.Text.UTF8Encoding $false).GetString([System.IO.File]::ReadAllBytes($envFile))
    if ($text.StartsWith([string][char]0xFEFF, [System.StringComparison]::Ordinal)) { $text = $text.Substring(1) }
    if ($text.EndsWith("`n", [System.StringComparison]::Ordinal)) { $text = $text.Substring(0, $text.Length - 1) }
    if ($text.Length -eq 0) { return }
    foreach ($line in $text.Split([char]10)) {
        if ($line.EndsWith("`r", [System.StringComparison]::Ordinal)) { $line.Substring(0, $line.Length - 1) } else { $line }
    }
}

# .env as UTF-8 without BOM, LF line ends, under Windows PowerShell 5.1 too (as compose and bash read it).
function Write-EnvLines([string[]]$Lines) {
    [System.IO.File]::WriteAllText($envFile, (($Lines -join "`n") + "`n"), (New-Object System.Text.UTF8Encoding $false))
}

# .env is a plain file, each line blank, a comment or KEY=VALUE with a value Test-EnvValue accepts whole.
# Throws one sentence (naming the variable) on the first problem. As check_site_env.
function Test-SiteEnv {
    Assert-SiteFile $envFile
    if ([Array]::IndexOf([System.IO.File]::ReadAllBytes($envFile), [byte]0) -ge 0) { throw "$envFile holds a NUL byte; write it again as plain text." }
    $number = 0
    foreach ($line in @(Read-EnvLines)) {
        $number++
        if ($line -cmatch '^[ \t]*(#.*)?\z') { continue }
        if ($line -cmatch '^([A-Za-z_][A-Za-z0-9_]{0,63})=(.*)\z') { Test-EnvValue $Matches[1] $Matches[2] }
        else { throw "line $number of $envFile is neither KEY=VALUE nor a comment; write one setting per line." }
    }
}

# Name's value in .env, '' if unset (the last line that sets it). Only after Test-SiteEnv: that is what makes
# the value safe to use whole. As env_value.
function Get-EnvValue([string]$Name) {
    if (-not (Test-Path -LiteralPath $envFile -PathType Leaf)) { return '' }
    $value = ''
    foreach ($line in @(Read-EnvLines)) { if ($line.StartsWith("$Name=", [System.StringComparison]::Ordinal)) { $value = $line.Substring($Name.Length + 1) } }
    return $value
}

# Name=Value in .env, in place of the lines that set Name, or added at the end; Value checked whole first.
function Set-EnvValue([string]$Name, [string]$Value) {
    Test-EnvValue $Name $Value
    $lines = @(Read-EnvLines)
    $found = $false
    for ($i = 0; $i -lt $lines.Count; $i++) {
        if ($lines[$i].StartsWith("$Name=", [System.StringComparison]::Ordinal)) { $lines[$i] = "$Name=$Value"; $found = $true }
    }
    if (-not $found) { $lines += "$Name=$Value" }
    Write-EnvLines $lines
}

# An existing .env is kept (a copy in .env.bak), else made from the .env.example copied into Dir; then
# CHEXNET_VERSION, CHEXNET_VARIANT and the settings the command line gave are set. As write_site_env.
function Write-SiteEnv {
    if (Test-Entry $envFile) {
        Test-SiteEnv
        Write-Host "==> keeping the existing $envFile (a copy is in .env.bak)"
        [System.IO.File]::Copy($envFile, "$envFile.bak", $true)
    } else {
        [System.IO.File]::Copy((Join-Path $Dir '.env.example'), $envFile)
        Write-Host "==> wrote $envFile from .env.example"
        Test-SiteEnv
    }
    Set-EnvValue 'CHEXNET_VERSION' $version
    Set-EnvValue 'CHEXNET_VARIANT' $packageVariant
    foreach ($name in $settings.Keys) {
        Set-EnvValue $name $settings[$name]
        Write-Host "==> set $name=$($settings[$name]) in $envFile"
    }
}

# The value an option sets, else the one in .env, else the default.
function Get-Setting([string]$Name, [string]$Default) {
    if ($settings.Contains($Name)) { return $settings[$Name] }
    $value = Get-EnvValue $Name
    if ($value) { return $value } else { return $Default }
}

# docker compose with the site's compose files, in Dir; throws when it fails. -Quiet: its output is handed
# back and its error stream dropped (Windows PowerShell 5.1 makes a redirected error stream of a native
# command a terminating error under 'Stop', so that is switched off here). -InputText: what it reads.
function Invoke-Compose([string[]]$Arguments, [switch]$Quiet, [string]$InputText) {
    $files = @('-f', 'docker-compose.yml')
    if ((Get-EnvValue 'CHEXNET_VARIANT') -ceq 'gpu') { $files += @('-f', 'docker-compose.gpu.yml') }
    Push-Location -LiteralPath $Dir
    try {
        if ($Quiet) {
            $ErrorActionPreference = 'Continue'
            & docker compose @files @Arguments 2>$null
        } elseif ($InputText) {
            $InputText | & docker compose @files @Arguments | Out-Host
        } else {
            & docker compose @files @Arguments | Out-Host
        }
        if ($LASTEXITCODE -ne 0) { throw "docker compose $($Arguments -join ' ') failed (exit $LASTEXITCODE)." }
    } finally { Pop-Location }
}
# The id of Service's container, '' if there is none (or compose cannot tell).
function Get-ContainerId([string]$Service) {
    try { return "$(@(Invoke-Compose @('ps', '-q', $Service) -Quiet)[0])" } catch { return '' }
}
# The product's own reader, in the image just loaded, checks the file before anything starts with it: JSON
# that parses, written by calibrate and unedited since. Which bundle it fits is checked as the API loads it
# (an install or upgrade whose bundle it does not fit is not healthy, and is rolled back).
function Test-SiteThresholds([string]$File) {
    $ErrorActionPreference = 'Continue'  # the check's own sentence on stderr is its answer, not an error here
    $said = (& docker run --rm --network none -v "${File}:/check/site-thresholds.json:ro" "chexnet-api-${packageVariant}:$version" `
            python -m chexnet.site_thresholds /check/site-thresholds.json $SiteThresholds 2>&1 | Out-String).Trim()
    if ($LASTEXITCODE -ne 0) { throw "-SiteThresholds cannot be used: $said" }
    Write-Host "==> site thresholds $said"
}
function Test-DicomEnabled { return (",$(Get-Setting 'COMPOSE_PROFILES' ''),") -clike '*,dicom,*' }
function Test-Installed { return (Test-Path -LiteralPath (Join-Path $Dir 'docker-compose.yml') -PathType Leaf) -and (Test-Path -LiteralPath $envFile -PathType Leaf) }

function Invoke-Preflight {
    if ($SkipPreflight) { Write-Warning 'pre-flight skipped (-SkipPreflight)'; return }
    $ports = @([int](Get-Setting 'HTTP_PORT' '80'), [int](Get-Setting 'HTTPS_PORT' '443'))
    if (Test-DicomEnabled) { $ports += [int](Get-Setting 'DICOM_PORT' '11112') }
    # A running stack of ours holds its own ports: that is an upgrade, not a conflict.
    if (Test-Installed) {
        $running = ''
        try { $running = "$(Invoke-Compose @('ps', '-q') -Quiet)" } catch { $running = '' }
        if ($running.Trim()) { $ports = @() }
    }
    # Run by path: the staged path is ProgramData's and a checked chexnet-offline-* name, no wildcard in it.
    & (Join-Path $staged 'scripts\preflight.ps1') -Variant $packageVariant -Dir $Dir -Ports $ports
}

# --- the install folder: Administrators' and SYSTEM's alone, but for what the containers mount -------------
# Docker Desktop (WSL 2) opens the folders it mounts as the Windows account it runs under, not elevated: that
# account (not 'Users') gets read on license, models and product_uuid, and modify on audit, certs and
# dicom-spool, as install.sh gives the containers' uids; it may list the install folder, not read its files.
$ContainerFolders = 'models', 'audit', 'certs', 'dicom-spool'
function Get-DockerUserSid {
    if ($script:DockerSid) { return $script:DockerSid }
    $process = Get-CimInstance -ClassName Win32_Process -Filter "Name = 'Docker Desktop.exe'" -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($process) {
        $owner = Invoke-CimMethod -InputObject $process -MethodName GetOwnerSid -ErrorAction SilentlyContinue
        if ($owner -and $owner.ReturnValue -eq 0 -and $owner.Sid) { $script:DockerSid = "$($owner.Sid)" }
    }
    if (-not $script:DockerSid) {
        $script:DockerSid = [System.Security.Principal.WindowsIdentity]::GetCurrent().User.Value
        Write-Warning "Docker Desktop is not running: the folders the containers mount in $Dir are shared with this account ($script:DockerSid); run the installer again as the account Docker Desktop runs under if that is another one."
    }
    return $script:DockerSid
}

function Grant-ContainerAccess {
    $docker = Get-DockerUserSid
    Set-PrivateAccess $Dir $docker 'ReadAndExecute' $false
    foreach ($sub in 'license', 'models') { Set-PrivateAccess (Join-Path $Dir $sub) $docker 'ReadAndExecute' }
    foreach ($sub in 'audit', 'certs', 'dicom-spool') { Set-PrivateAccess (Join-Path $Dir $sub) $docker 'Modify' }
    $uuidFile = Join-Path $Dir 'product_uuid'
    if (Test-Entry $uuidFile) { Set-PrivateAccess $uuidFile $docker 'ReadAndExecute' }
    # The DICOM node's licence token: Administrators, SYSTEM and the node (through the mount) only.
    $nodeToken = Join-Path $Dir 'license\dicom-node.token'
    if (Test-Entry $nodeToken) { Set-PrivateAccess $nodeToken $docker 'ReadAndExecute' }
}

# Dir becomes Administrators' and SYSTEM's alone, owner included. Older installers left it inheriting from
# C:\ (Authenticated Users: Modify), so whatever anyone put in it is reset too: every item inherits from its
# folder only and belongs to Administrators. A link or junction is refused (the installer would read or write
# through it), except below the containers' folders, where one is left as it is and never entered.
function Protect-InstallFolder {
    if (-not (Test-Entry $Dir)) {
        [void][System.IO.Directory]::CreateDirectory([System.IO.Path]::GetDirectoryName($Dir))
        New-PrivateFolder $Dir
    }
    $root = Get-Item -LiteralPath $Dir -Force
    if (-not $root.PSIsContainer -or ($root.Attributes -band [System.IO.FileAttributes]::ReparsePoint)) { throw "$Dir is a link, a junction or a file; give -Dir a folder of its own." }
    Set-PrivateAccess $Dir
    foreach ($item in @(Get-TreeItem $Dir)) {
        $relative = $item.FullName.Substring($Dir.Length + 1)
        $parts = $relative -split '\\'
        if ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) {
            if ($parts.Count -gt 1 -and $ContainerFolders -ccontains $parts[0]) { continue }
            throw "$($item.FullName) is not a regular file (a link, FIFO or device there is refused, and not read); put the file itself there."
        }
        try { Reset-ItemAccess $item.FullName }
        catch { throw "$($item.FullName) cannot be made Administrators' and SYSTEM's alone ($($_.Exception.Message)); remove it and run the installer again." }
    }
    foreach ($sub in 'license', 'license\keys', 'models', 'audit', 'certs', 'dicom-spool') { [void][System.IO.Directory]::CreateDirectory((Join-Path $Dir $sub)) }
    Grant-ContainerAccess
}

# What an upgrade may change, kept so that a failed upgrade can put it back.
function Save-Snapshot {
    $keep = Join-Path $Dir '.rollback'
    if (Test-Entry $keep) { [System.IO.Directory]::Delete($keep, $true) }
    [void][System.IO.Directory]::CreateDirectory($keep)
    foreach ($item in 'docker-compose.yml', 'docker-compose.gpu.yml', '.env', 'license') { Copy-Item -LiteralPath (Join-Path $Dir $item) -Destination $keep -Recurse -Force }
}
function Restore-Snapshot {
    $keep = Join-Path $Dir '.rollback'
    foreach ($file in 'docker-compose.yml', 'docker-compose.gpu.yml', '.env') { Copy-Item -LiteralPath (Join-Path $keep $file) -Destination $Dir -Force }
    [System.IO.Directory]::Delete((Join-Path $Dir 'license'), $true)
    Copy-Item -LiteralPath (Join-Path $keep 'license') -Destination $Dir -Recurse -Force
    Grant-ContainerAccess
}

function Set-Configuration {
    Write-Host "==> configuring $Dir"
    foreach ($sub in 'license', 'license\keys', 'models', 'audit', 'certs', 'dicom-spool') { [void][System.IO.Directory]::CreateDirectory((Join-Path $Dir $sub)) }
    foreach ($file in 'docker-compose.yml', 'docker-compose.gpu.yml', '.env.example') { Copy-ListedFile $staged $file (Join-Path $Dir $file) }
    # The API trusts exactly the licence keys this signed package lists, no others (hidden ones included).
    $keys = Join-Path $Dir 'license\keys'
    foreach ($entry in @(Get-ChildItem -LiteralPath $keys -Force)) {
        if ($entry.PSIsContainer) { [System.IO.Directory]::Delete($entry.FullName, $true) }
        else { $entry.Attributes = 'Normal'; [System.IO.File]::Delete($entry.FullName) }
    }
    foreach ($key in @(Get-ListedFiles $staged)) {
        $leaf = ($key -split '/')[-1]
        if ($key -clike 'license/keys/*.pem') { Copy-ListedFile $staged $key (Join-Path $keys $leaf) }
    }
    Write-SiteEnv
    if ($SiteThresholds) {
        $siteFile = Join-Path $Dir 'license\site-thresholds.json'
        [System.IO.File]::Delete($siteFile)
        if (-not (Copy-PrivateFile $SiteThresholds $siteFile 16777216)) {
            [System.IO.File]::Delete($siteFile)
            throw "$SiteThresholds was replaced while it was read, so it is not used; run this again."
        }
        Test-SiteThresholds $siteFile
    }
    # Docker Desktop's VM cannot see the host's SMBIOS: the container reads this file instead.
    & (Join-Path $staged 'scripts\product-uuid.ps1') -OutFile (Join-Path $Dir 'product_uuid') | Out-Null
    if (Test-DicomEnabled) {
        # The DICOM node is licensed like any client: by a token file.
        $nodeToken = Join-Path $Dir 'license\dicom-node.token'
        if ($TokenFile) {
            [System.IO.File]::Delete($nodeToken)
            if (-not (Copy-PrivateFile $TokenFile $nodeToken 65536)) {
                [System.IO.File]::Delete($nodeToken)
                throw "$TokenFile was replaced while it was read, so it is not used; run this again."
            }
        }
        if (-not (Test-Path -LiteralPath $nodeToken -PathType Leaf) -or (Get-Item -LiteralPath $nodeToken -Force).Length -eq 0) { throw 'the DICOM node needs a licence token: add -TokenFile.' }
        if (-not (Get-Setting 'CHEXNET_DICOM_ALLOWED_AES' '')) { throw 'the DICOM node needs -DicomAllowedAes (the AE titles allowed to send images).' }
    }
    Grant-ContainerAccess
}

# Service healthy -> $true; unhealthy, exited or restarting again and again -> $false at once; else wait.
function Wait-Healthy([string]$Service) {
    $ErrorActionPreference = 'Continue'  # a container not there yet is a state to wait on (see Invoke-Compose)
    Write-Host "==> waiting for $Service to turn healthy (up to $Timeout s)"
    $deadline = (Get-Date).AddSeconds([double]$Timeout)
    $state = 'starting/0/'
    $id = ''
    while ((Get-Date) -lt $deadline) {
        $id = Get-ContainerId $Service
        $state = 'starting/0/'
        if ($id) {
            $inspected = & docker inspect -f '{{.State.Status}}/{{.RestartCount}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' $id 2>$null
            if ($LASTEXITCODE -eq 0 -and $inspected) { $state = "$inspected" }
        }
        $status, $restarts, $health = $state -split '/'
        if ($health -ceq 'healthy') { Write-Host "==> $Service healthy"; return $true }
        if ($health -ceq 'unhealthy' -or $status -ceq 'exited' -or $status -ceq 'dead' -or [int]$restarts -ge 3) { break }
        Start-Sleep -Seconds 3
    }
    Write-Warning "$Service did not turn healthy (state $state); its last log lines:"
    if ($id) { & docker logs --tail 20 $id 2>&1 | Out-Host }
    return $false
}

# Every container of the stack runs Value's image: running, and healthy where it has a health check (a
# failed 'up' leaves the old ones running, healthy). As runs_version.
function Test-RunningVersion([string]$Value) {
    $ErrorActionPreference = 'Continue'
    $services = @('api', 'nginx')
    if (Test-DicomEnabled) { $services += 'dicom-node' }
    foreach ($service in $services) {
        $expected = "chexnet-api-$(Get-EnvValue 'CHEXNET_VARIANT'):$Value"
        if ($service -ceq 'nginx') { $expected = "chexnet-nginx:$Value" }
        $id = Get-ContainerId $service
        $state = 'absent'
        if ($id) {
            $inspected = & docker inspect -f '{{.Config.Image}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' $id 2>$null
            if ($LASTEXITCODE -eq 0 -and $inspected) { $state = "$inspected" }
        }
        if ($state -cne "$expected running healthy" -and $state -cne "$expected running none") {
            Write-Warning "$service is not $expected, running and healthy (it is: $state)"
            return $false
        }
    }
    return $true
}

function Start-Version([string]$Value) {
    Write-Host "==> starting CheXNet $Value"
    try { Invoke-Compose @('up', '-d', '--remove-orphans') }
    catch { Write-Warning "docker compose up -d failed for $Value (its message is above)"; return $false }
    if (-not (Wait-Healthy 'api')) { return $false }
    if ((Test-DicomEnabled) -and -not (Wait-Healthy 'dicom-node')) { return $false }
    return (Test-RunningVersion $Value)
}

function Invoke-Smoke {
    if (-not $TokenFile) { Write-Warning 'no -TokenFile: skipped the smoke prediction (install the PACS token and rerun, or run the QA script).'; return }
    Write-Host '==> smoke prediction through nginx'
    $token = [System.IO.File]::ReadAllText((Get-Item -LiteralPath $TokenFile -Force).FullName)
    try { Invoke-Compose @('exec', '-T', 'api', 'python', '-m', 'chexnet.api.smoke', '--url', 'https://nginx:8443') -InputText $token }
    catch { throw 'the smoke prediction failed (see above).' }
}

try {
    Enter-OneAtATime
    # 1. verify the tarball, in a private copy that is all this script uses from then on (no impact)
    Initialize-PackageStaging $unpacked $Package $VendorKey $VendorFingerprint
    $staged = $script:Staged
    $packageVariant = Get-PackageValue 'VARIANT' '^(cpu|gpu)\z'
    $version = Get-PackageValue 'VERSION' $script:VersionPattern
    if ($Variant -and $Variant -cne $packageVariant) {
        throw "this is the $packageVariant package; use the chexnet-offline-*-$Variant package for -Variant $Variant."
    }
    # An existing .env is checked whole before any of its values is used (pre-flight reads the ports).
    if (Test-Entry $envFile) { Test-SiteEnv }
    Assert-NotOlder $Dir $AllowDowngrade.IsPresent

    # 2. pre-flight (no impact), 3. load images
    Invoke-Preflight
    Import-PackageImages $staged

    # 4. configure, 5-6. up and wait until every container runs this version, healthy
    Protect-InstallFolder
    if (Test-Installed) {
        $previous = Get-EnvValue 'CHEXNET_VERSION'
        Save-Snapshot
        # Any failure from here on is the upgrade's (or reinstall's): it is rolled back, never left half done.
        $started = $false
        try { Set-Configuration; $started = Start-Version $version }
        catch { Write-Warning "$($_.Exception.Message)" }
        if (-not $started) {
            Write-Warning "version $version did not start as it should; rolling back to $previous"
            Restore-Snapshot
            # What runs now is what the restored .env says, not what this command line asked for.
            $settings.Clear()
            $back = $false
            try { $back = Start-Version $previous } catch { Write-Warning "$($_.Exception.Message)" }
            if (-not $back) { throw "rollback to $previous did not turn healthy either; see 'docker logs'." }
            if ($previous -ceq $version) { throw "installing $version again with these options failed; the previous configuration was put back and runs again." }
            throw "upgrade to $version failed and was rolled back to $previous."
        }
        if ($previous -cne $version) { Write-Host "==> upgraded $previous -> $version" }
    } else {
        Set-Configuration
        if (-not (Start-Version $version)) { throw "the API did not turn healthy; see the log lines above and $Dir\.env." }
    }
    Save-InstalledSequence $Dir

    # 7. smoke prediction
    Invoke-Smoke
    $port = Get-Setting 'HTTPS_PORT' '443'
    $suffix = if ($port -ne '443') { ":$port" } else { '' }
    Write-Host "==> CheXNet $version ($packageVariant) is running in ${Dir}: https://$(Get-Setting 'TLS_HOSTNAME' 'chexnet.local')$suffix/"
} finally {
    Remove-PackageStaging
}
