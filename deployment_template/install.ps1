# Install (or upgrade) CheXNet from this unpacked offline package on Windows with Docker Desktop; step
# for step with install.sh. Reads as a table of contents: verify the package with the vendor's key (no
# impact) -> pre-flight (no impact) -> load images -> configure (never overwrites .env; writes only the
# options given, and the host's product_uuid for the container) -> up -> wait until healthy -> smoke
# prediction (with -TokenFile). An upgrade that does not turn healthy is rolled back.
# Windows PowerShell 5.1 and PowerShell 7; run as Administrator.
# Usage: .\install.ps1 (-VendorKey vendor_package.crt | -VendorFingerprint HEX) [-Dir C:\chexnet]
#            [-TokenFile token.txt] [-Hostname NAME] [-Bind ADDRESS] [-HttpsPort 443] [-HttpPort 80]
#            [-DicomDestination AE@host:port -DicomAllowedAes AE,... [-DicomAeTitle CHEXNET]
#             [-DicomPort 11112] [-DicomBind ADDRESS]]   (the optional DICOM node; needs -TokenFile)
#            [-SkipPreflight] [-TimeoutSeconds 600]
[CmdletBinding()]
param(
    [string]$Dir = 'C:\chexnet',
    [string]$VendorKey,
    [string]$VendorFingerprint,
    [string]$TokenFile,
    [ValidatePattern('^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\z')][string]$Hostname,
    [ValidatePattern('^([0-9]{1,3}\.){3}[0-9]{1,3}\z')][string]$Bind,
    [ValidateRange(1, 65535)][int]$HttpsPort,
    [ValidateRange(1, 65535)][int]$HttpPort,
    [ValidatePattern('^[A-Za-z0-9._-]{1,16}@[A-Za-z0-9.-]{1,253}:[0-9]{1,5}\z')][string]$DicomDestination,
    [ValidatePattern('^[A-Za-z0-9._-]{1,16}(,[A-Za-z0-9._-]{1,16})*\z')][string]$DicomAllowedAes,
    [ValidatePattern('^[A-Za-z0-9._-]{1,16}\z')][string]$DicomAeTitle,
    [ValidateRange(1, 65535)][int]$DicomPort,
    [ValidatePattern('^([0-9]{1,3}\.){3}[0-9]{1,3}\z')][string]$DicomBind,
    [switch]$SkipPreflight,
    [int]$TimeoutSeconds = 600
)
$ErrorActionPreference = 'Stop'
$package = $PSScriptRoot
. (Join-Path $package 'scripts\package-trust.ps1')
$version = (Get-Content (Join-Path $package 'VERSION')).Trim()
$variant = (Get-Content (Join-Path $package 'VARIANT')).Trim()
$envFile = Join-Path $Dir '.env'
if ($TokenFile -and -not (Test-Path -LiteralPath $TokenFile)) { throw "-TokenFile $TokenFile cannot be read." }
# .env keys the engineer set on the command line
$settings = [ordered]@{}
if ($Hostname) { $settings['TLS_HOSTNAME'] = $Hostname }
if ($Bind) { $settings['BIND_ADDRESS'] = $Bind }
if ($HttpsPort) { $settings['HTTPS_PORT'] = "$HttpsPort" }
if ($HttpPort) { $settings['HTTP_PORT'] = "$HttpPort" }
if ($DicomDestination) { $settings['CHEXNET_DICOM_DESTINATION'] = $DicomDestination; $settings['COMPOSE_PROFILES'] = 'dicom' }
if ($DicomAllowedAes) { $settings['CHEXNET_DICOM_ALLOWED_AES'] = $DicomAllowedAes }
if ($DicomAeTitle) { $settings['CHEXNET_DICOM_AE_TITLE'] = $DicomAeTitle }
if ($DicomPort) { $settings['DICOM_PORT'] = "$DicomPort" }
if ($DicomBind) { $settings['DICOM_BIND_ADDRESS'] = $DicomBind }

function Get-EnvValue([string]$Name) {
    if (-not (Test-Path $envFile)) { return $null }
    $line = Get-Content $envFile | Where-Object { $_ -match "^$Name=" } | Select-Object -Last 1
    if ($line) { return ($line -split '=', 2)[1] } else { return $null }
}
function Set-EnvValue([string]$Name, [string]$Value) {
    $lines = @(Get-Content $envFile)
    if ($lines -match "^$Name=") { $lines = $lines -replace "^$Name=.*", "$Name=$Value" } else { $lines += "$Name=$Value" }
    [System.IO.File]::WriteAllLines($envFile, [string[]]$lines)
}
# The value an option sets, else the one in .env, else the default.
function Get-Setting([string]$Name, [string]$Default) {
    if ($settings.Contains($Name)) { return $settings[$Name] }
    $value = Get-EnvValue $Name
    if ($value) { return $value } else { return $Default }
}
function Invoke-Compose([string[]]$Arguments) {
    $files = @('-f', 'docker-compose.yml')
    if ((Get-EnvValue 'CHEXNET_VARIANT') -eq 'gpu') { $files += @('-f', 'docker-compose.gpu.yml') }
    Push-Location $Dir
    try {
        & docker compose @files @Arguments
        if ($LASTEXITCODE -ne 0) { throw "docker compose $($Arguments -join ' ') failed (exit $LASTEXITCODE)." }
    } finally { Pop-Location }
}
function Test-DicomEnabled { return (",$(Get-Setting 'COMPOSE_PROFILES' ''),") -like '*,dicom,*' }
function Test-Installed { return (Test-Path (Join-Path $Dir 'docker-compose.yml')) -and (Test-Path $envFile) }

# What an upgrade may change, kept so that a failed upgrade can put it back.
function Save-Snapshot {
    $keep = Join-Path $Dir '.rollback'
    if (Test-Path $keep) { Remove-Item -Recurse -Force $keep }
    New-Item -ItemType Directory -Force -Path $keep | Out-Null
    foreach ($item in 'docker-compose.yml', 'docker-compose.gpu.yml', '.env', 'license') { Copy-Item -Recurse (Join-Path $Dir $item) $keep }
}
function Restore-Snapshot {
    $keep = Join-Path $Dir '.rollback'
    foreach ($file in 'docker-compose.yml', 'docker-compose.gpu.yml', '.env') { Copy-Item -Force (Join-Path $keep $file) $Dir }
    Remove-Item -Recurse -Force (Join-Path $Dir 'license')
    Copy-Item -Recurse (Join-Path $keep 'license') $Dir
}

function Set-Configuration {
    Write-Host "==> configuring $Dir"
    foreach ($sub in 'license\keys', 'models', 'audit', 'certs', 'dicom-spool') { New-Item -ItemType Directory -Force -Path (Join-Path $Dir $sub) | Out-Null }
    foreach ($file in 'docker-compose.yml', 'docker-compose.gpu.yml', '.env.example') { Copy-Item (Join-Path $package $file) $Dir -Force }
    # The API trusts exactly the licence keys this signed package lists, no others.
    Get-ChildItem (Join-Path $Dir 'license\keys') | Remove-Item -Force
    foreach ($key in Get-ListedFiles $package) {
        if ($key -like 'license/keys/*.pem') { Copy-Item (Join-Path $package $key) (Join-Path $Dir 'license\keys') }
    }
    if (Test-Path $envFile) {
        Write-Host "==> keeping the existing $envFile (a copy is in .env.bak)"
        Copy-Item $envFile "$envFile.bak" -Force
    } else {
        Copy-Item (Join-Path $package '.env.example') $envFile
        Write-Host "==> wrote $envFile from .env.example"
    }
    Set-EnvValue 'CHEXNET_VERSION' $version
    Set-EnvValue 'CHEXNET_VARIANT' $variant
    foreach ($name in $settings.Keys) {
        Set-EnvValue $name $settings[$name]
        Write-Host "==> set $name=$($settings[$name]) in $envFile"
    }
    # Docker Desktop's VM cannot see the host's SMBIOS: the container reads this file instead.
    & (Join-Path $package 'scripts\product-uuid.ps1') -OutFile (Join-Path $Dir 'product_uuid') | Out-Null
    if (Test-DicomEnabled) {
        # The DICOM node is licensed like any client: by a token file.
        $nodeToken = Join-Path $Dir 'license\dicom-node.token'
        if ($TokenFile) { Copy-Item -Force $TokenFile $nodeToken }
        if (-not (Test-Path $nodeToken) -or (Get-Item $nodeToken).Length -eq 0) { throw 'the DICOM node needs a licence token: add -TokenFile.' }
        if (-not (Get-Setting 'CHEXNET_DICOM_ALLOWED_AES' '')) { throw 'the DICOM node needs -DicomAllowedAes (the AE titles allowed to send images).' }
    }
}

# $Service healthy -> $true; unhealthy, exited or restarting again and again -> $false at once; else wait.
function Wait-Healthy([string]$Service) {
    Write-Host "==> waiting for $Service to turn healthy (up to $TimeoutSeconds s)"
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    $state = 'starting'
    while ((Get-Date) -lt $deadline) {
        Push-Location $Dir
        try { $api = (& docker compose ps -q $Service) } finally { Pop-Location }
        if ($LASTEXITCODE -eq 0 -and $api) {
            $state = (& docker inspect -f '{{.State.Status}}/{{.RestartCount}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' $api 2>$null)
            if ($LASTEXITCODE -eq 0) {
                $status, $restarts, $health = "$state" -split '/'
                if ($health -eq 'healthy') { Write-Host "==> $Service healthy"; return $true }
                if ($health -eq 'unhealthy' -or $status -in @('exited', 'dead') -or [int]$restarts -ge 3) { break }
            }
        }
        Start-Sleep -Seconds 3
    }
    Write-Warning "$Service did not turn healthy (state $state); its last log lines:"
    if ($api) { & docker logs --tail 20 $api }
    return $false
}
function Start-Version([string]$Value) {
    Write-Host "==> starting CheXNet $Value"
    Invoke-Compose @('up', '-d', '--remove-orphans')
    if (-not (Wait-Healthy 'api')) { return $false }
    if (Test-DicomEnabled) { return (Wait-Healthy 'dicom-node') }
    return $true
}

# 1. verify the package (no impact)
$cert = Resolve-VendorCertificate $package $VendorKey $VendorFingerprint
Test-Package $package $cert

# 2. pre-flight (no impact)
if ($SkipPreflight) { Write-Warning 'pre-flight skipped (-SkipPreflight)' }
else {
    $ports = @([int](Get-Setting 'HTTP_PORT' '80'), [int](Get-Setting 'HTTPS_PORT' '443'))
    if (Test-DicomEnabled) { $ports += [int](Get-Setting 'DICOM_PORT' '11112') }
    if (Test-Installed) {  # our own running stack holds them: an upgrade
        Push-Location $Dir
        try { if (& docker compose ps -q 2>$null) { $ports = @() } } finally { Pop-Location }
    }
    & (Join-Path $package 'scripts\preflight.ps1') -Variant $variant -Dir $Dir -Ports $ports
}

# 3. load images, 4. configure
Import-PackageImages $package
$previous = $null
if (Test-Installed) {
    $previous = Get-EnvValue 'CHEXNET_VERSION'
    Save-Snapshot
}
Set-Configuration

# 5-6. up and wait (with rollback on a failed upgrade)
if ($previous -and $previous -ne $version) {
    Write-Host "==> upgrade $previous -> $version"
    if (-not (Start-Version $version)) {
        Write-Warning "version $version did not turn healthy; rolling back to $previous"
        Restore-Snapshot
        if (-not (Start-Version $previous)) { throw "rollback to $previous did not turn healthy either; see 'docker compose logs api'." }
        throw "upgrade to $version failed and was rolled back to $previous."
    }
} elseif (-not (Start-Version $version)) {
    throw "the API did not turn healthy; see the log lines above and $envFile."
}

# 7. smoke prediction
if ($TokenFile) {
    Write-Host '==> smoke prediction through nginx'
    Push-Location $Dir
    try {
        Get-Content $TokenFile | & docker compose exec -T api python -m chexnet.api.smoke --url https://nginx:8443
        if ($LASTEXITCODE -ne 0) { throw 'the smoke prediction failed (see above).' }
    } finally { Pop-Location }
} else { Write-Warning 'no -TokenFile: skipped the smoke prediction (install the PACS token and rerun, or run the QA script).' }
$port = Get-Setting 'HTTPS_PORT' '443'
$suffix = if ($port -ne '443') { ":$port" } else { '' }
Write-Host "==> CheXNet $version ($variant) is running in ${Dir}: https://$(Get-Setting 'TLS_HOSTNAME' 'chexnet.local')$suffix/"
